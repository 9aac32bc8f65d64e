"""Files are data, never code: booby-trapped files through every way the project reads one.

Each trap is a pickle that, fully unpickled, calls a function of its choosing (``exec`` or
``os.system``) to create a marker file; the tests first show that the trap works when
unpickled the unsafe way, then hand it to every entry point and check that the marker never
appears: the file is refused with one line naming it, or (reference networks pickled whole)
its weights are read while the payload stays inert.
"""

from __future__ import annotations

import functools
import http.server
import os
import pickle
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, one_line_error

import detect
import evaluate
import model.pretrained as pretrained
import train
from common.download import file_sha256
from common.errors import InputError
from data.frame_folders import find_split_dir, list_videos
from data.frames import FrameWindowDataset
from inference import load_scorer
from inference.calibration import calibrate_training_run
from model import LGNNet
from model.weights_file import load_reference_checkpoint


class ExecPayload:
    """Unpickled, this calls ``exec``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').close()"

    def __reduce__(self):
        return (exec, (self.code,))


class SystemPayload:
    """Unpickled, this calls ``os.system``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


class Traps(types.SimpleNamespace):
    marker: Path
    checkpoint: Path  # our checkpoint format with one more entry: the payload
    system: Path  # the same with an os.system payload
    state_dict: Path  # {"state_dict": weights, "hook": payload}, for --model_dir
    network: Path  # a whole pickled network of an unknown class, carrying a payload
    items: Path  # a payload where the memory items should be
    keys: Path  # the real memory items


@pytest.fixture(scope="module")
def traps(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Traps:
    folder = tmp_path_factory.mktemp("traps")
    marker = folder / "PAYLOAD_RAN"
    saved = torch.load(trained_run / "checkpoint.pth", weights_only=False)  # our own file
    weights = torch.load(trained_run / "model.pth", weights_only=True)
    torch.save({**saved, "extra": ExecPayload(marker)}, folder / "checkpoint.pth")
    torch.save({**saved, "extra": SystemPayload(marker)}, folder / "system.pth")
    torch.save({"state_dict": weights, "hook": ExecPayload(marker)}, folder / "state_dict.pth")
    torch.save(ExecPayload(marker), folder / "items.pt")
    # The reference release saves torch.save(model) of a class users cannot import.
    module = types.ModuleType("reference_release_network")
    network_class = type("ConvAE", (LGNNet,), {"__module__": module.__name__})
    module.ConvAE = network_class
    sys.modules[module.__name__] = module
    try:
        sizes = saved["model_args"]
        network = network_class(**sizes)
        network.load_state_dict(weights)
        network.hook = ExecPayload(marker)
        torch.save(network, folder / "network.pth")
    finally:
        del sys.modules[module.__name__]
    traps = Traps(
        marker=marker, checkpoint=folder / "checkpoint.pth", system=folder / "system.pth",
        state_dict=folder / "state_dict.pth", network=folder / "network.pth",
        items=folder / "items.pt", keys=trained_run / "keys.pt",
    )  # fmt: skip
    # The traps are real: unpickled the unsafe way, each runs its payload.
    for path in (traps.checkpoint, traps.system, traps.state_dict, traps.items):
        torch.load(path, weights_only=False)
        assert marker.exists(), path
        marker.unlink()
    return traps


@pytest.fixture(autouse=True)
def payload_never_runs(request: pytest.FixtureRequest):
    yield
    if "traps" in request.fixturenames:
        traps = request.getfixturevalue("traps")
        assert not traps.marker.exists(), "a payload ran"


def refusal(call, *args, **kwargs) -> str:
    """The one-line InputError message of ``call``."""
    return one_line_error(lambda: call(*args, **kwargs))


def eval_args(tiny_dataset: Path, *extra: object) -> object:
    argv = ["--dataset_type", "ped2", "--dataset_path", tiny_dataset, "--precision", "fp32"]
    return evaluate.get_args_parser().parse_args([str(a) for a in [*argv, *extra]])


# --------------------------------------------------------------------------- refused files


def test_a_trapped_checkpoint_is_refused_by_every_command_line(
    traps: Traps, tiny_dataset: Path, tmp_path: Path
) -> None:
    trap = traps.checkpoint
    message = refusal(evaluate.main, eval_args(tiny_dataset, "--checkpoint", trap))
    assert str(trap) in message and "builtins.exec" in message
    assert "torch.save(model.state_dict()" in message  # how to convert it

    clip = tiny_dataset / "ped2" / "testing" / "frames" / "01"
    args = detect.get_args_parser().parse_args(["--checkpoint", str(trap), "--input", str(clip)])
    assert str(trap) in refusal(detect.main, args)
    calibrate = ["--calibrate", "--checkpoint", str(trap), "--input", str(clip)]
    calibrate += ["--output_checkpoint", str(tmp_path / "calibrated.pth")]
    assert str(trap) in refusal(detect.main, detect.get_args_parser().parse_args(calibrate))
    assert not (tmp_path / "calibrated.pth").exists()

    argv = ["--dataset_type", "ped2", "--dataset_path", str(tiny_dataset), "--h", "16"]
    argv += ["--w", "24", "--output_root", str(tmp_path / "exp"), "--resume", str(trap)]
    assert str(trap) in refusal(train.main, train.get_args_parser().parse_args(argv))

    exported = tmp_path / "published.pth"
    assert pretrained.main(["export", str(trap), str(exported)]) == 2
    assert not exported.exists()


def test_an_os_system_payload_is_refused_even_where_networks_are_accepted(
    traps: Traps, tiny_dataset: Path
) -> None:
    args = eval_args(
        tiny_dataset, "--model_dir", traps.system, "--m_items_dir", traps.keys, "--h", "16",
        "--w", "24",
    )  # fmt: skip
    message = refusal(evaluate.main, args)
    assert str(traps.system) in message and "posix.system" in message
    assert str(traps.system) in refusal(load_reference_checkpoint, traps.system, traps.keys)


def test_a_trapped_items_file_is_refused(traps: Traps, tiny_dataset: Path) -> None:
    args = eval_args(
        tiny_dataset, "--model_dir", traps.state_dict, "--m_items_dir", traps.items, "--h",
        "16", "--w", "24",
    )  # fmt: skip
    assert str(traps.items) in refusal(evaluate.main, args)


def test_downloads_and_published_names_are_read_as_data_too(
    traps: Traps, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LGN_CACHE", str(tmp_path / "cache"))
    url = traps.checkpoint.as_uri()
    assert "builtins.exec" in refusal(evaluate.main, eval_args(tiny_dataset, "--checkpoint", url))

    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(traps.checkpoint.parent)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        # Another URL of the same file name: a cache file of its own, fetched afresh.
        http_url = f"http://127.0.0.1:{server.server_address[1]}/checkpoint.pth"
        message = refusal(evaluate.main, eval_args(tiny_dataset, "--checkpoint", http_url))
        assert "builtins.exec" in message
    finally:
        server.shutdown()
        server.server_close()

    # A published name whose bundled file is missing: its mirror is downloaded, then read.
    mirror = tmp_path / "mirror" / "trap.pth"
    mirror.parent.mkdir()
    mirror.write_bytes(traps.checkpoint.read_bytes())
    entry = {"file": "trap.pth", "sha256": file_sha256(mirror), "url": mirror.as_uri()}
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(pretrained, "PUBLISHED_WEIGHTS", {"trap": entry})
    assert "builtins.exec" in refusal(
        evaluate.main, eval_args(tiny_dataset, "--checkpoint", "trap")
    )
    assert "builtins.exec" in refusal(load_scorer, "trap", device="cpu")


def test_the_python_api_torch_hub_and_calibration_refuse_it(
    traps: Traps, tiny_dataset: Path
) -> None:
    assert str(traps.checkpoint) in refusal(load_scorer, traps.checkpoint, device="cpu")
    with pytest.raises(InputError, match="builtins.exec"):
        torch.hub.load(
            str(REPO_ROOT), "lgn_net", weights=str(traps.checkpoint), source="local", device="cpu"
        )
    videos = list_videos(find_split_dir(tiny_dataset / "ped2", "training"))
    dataset = FrameWindowDataset(videos, 16, 24, t_length=2)
    model = LGNNet(t_length=2, msize=4, fdim=64, mdim=64)
    items = torch.nn.functional.normalize(torch.rand(4, 64), dim=1)
    before = traps.checkpoint.read_bytes()
    message = refusal(calibrate_training_run, traps.checkpoint, model, items, dataset)
    assert str(traps.checkpoint) in message and traps.checkpoint.read_bytes() == before


# --------------------------------------------------------------------------- inert payloads


def test_reference_networks_load_their_weights_while_the_payload_stays_inert(
    traps: Traps, tiny_dataset: Path, trained_run: Path, tmp_path: Path
) -> None:
    weights = torch.load(trained_run / "model.pth", weights_only=True)
    for trap in (traps.network, traps.state_dict):
        model, _ = load_reference_checkpoint(trap, traps.keys)
        for name, value in model.state_dict().items():
            assert torch.equal(value, weights[name]), (trap, name)
    with pytest.raises(InputError, match="weights_only"):
        load_reference_checkpoint(traps.network, traps.keys, allow_pickled_model=False)

    # Both command lines and the Python API score with them.
    flags = ["--model_dir", traps.network, "--m_items_dir", traps.keys, "--h", "16", "--w", "24"]
    report = evaluate.main(eval_args(tiny_dataset, *flags))
    reference = evaluate.main(
        eval_args(tiny_dataset, "--checkpoint", trained_run / "checkpoint.pth")
    )
    assert report["auc"] == reference["auc"]
    clip = tiny_dataset / "ped2" / "testing" / "frames" / "01"
    calibrated = tmp_path / "calibrated.pth"
    argv = ["--calibrate", *map(str, flags), "--input", str(clip), "--precision", "fp32"]
    argv += ["--output_checkpoint", str(calibrated), "--false_alarm_rate", "0.1"]
    detect.main(detect.get_args_parser().parse_args(argv))
    written = torch.load(calibrated, weights_only=True)  # plain data: no payload came along
    assert "calibration" in written and "hook" not in written
    scorer = load_scorer(model_dir=traps.network, m_items_dir=traps.keys, device="cpu")
    frames = np.full((4, 16, 24, 3), 120, np.uint8)
    assert len(scorer.score(frames).psnr) == 3


def test_only_the_project_s_own_checkpoints_resume(traps: Traps, tmp_path: Path) -> None:
    # The pickle machinery itself is never used on a file outside PyTorch's restricted
    # unpickler: a plain pickle of a payload is not even a torch.save file.
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(ExecPayload(traps.marker)))
    args = train.get_args_parser().parse_args(
        [
            "--dataset_path",
            str(tmp_path),
            "--output_root",
            str(tmp_path / "exp"),
            "--resume",
            str(plain),
        ]
    )
    assert str(plain) in refusal(train.main, args)


def test_a_network_or_checkpoint_containing_itself_is_refused_in_one_line(
    traps: Traps, tiny_dataset: Path, trained_run: Path, tmp_path: Path
) -> None:
    """A pickle can make a module its own child, or a dict its own "model" entry; reading
    the weights off such a file used to recurse until a raw RecursionError."""
    module = types.ModuleType("reference_release_network")
    network_class = type("ConvAE", (LGNNet,), {"__module__": module.__name__})
    module.ConvAE = network_class
    sys.modules[module.__name__] = module
    try:
        network = network_class(**torch.load(trained_run / "checkpoint.pth")["model_args"])
        network.encoder.back = network  # a module holding its own ancestor
        torch.save(network, tmp_path / "cyclic_network.pth")
    finally:
        del sys.modules[module.__name__]
    cyclic: dict = {}
    cyclic["model"] = cyclic
    torch.save(cyclic, tmp_path / "cyclic_dict.pth")

    message = refusal(load_reference_checkpoint, tmp_path / "cyclic_network.pth", traps.keys)
    assert "contains itself (its module 'encoder.back' is one that holds it)" in message
    assert "cyclic_network.pth" in message
    flags = ["--model_dir", tmp_path / "cyclic_dict.pth", "--m_items_dir", traps.keys]
    message = refusal(evaluate.main, eval_args(tiny_dataset, *flags, "--h", "16", "--w", "24"))
    assert "cyclic_dict.pth" in message and "'model' entry contains itself" in message
