"""Checkpoint loading: a reference-layout state_dict built from the documented layout alone,
run through an independent functional forward, must give the loaded model's outputs."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import InputError
from model import LGNNet, init_memory_items
from model.weights import check_memory_items, extract_state_dict, load_model_weights
from model.weights_file import load_for_inference, load_reference_checkpoint

HIDDEN = 128
LAYERS = 4


def reference_layout() -> dict[str, tuple[int, ...]]:
    """The 197 names and shapes of a default-size reference state_dict, as documented."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def deconv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.weight"] = (cin, cout, 3, 3)  # transposed convs store (in, out, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def bn(name: str, size: int) -> None:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{field}"] = (size,)
        shapes[f"{name}.num_batches_tracked"] = ()

    def basic(name: str, cin: int, cout: int) -> None:
        conv(f"{name}.0", cin, cout)
        bn(f"{name}.1", cout)
        conv(f"{name}.3", cout, cout)
        bn(f"{name}.4", cout)

    basic("encoder.moduleConv1", 12, 64)
    basic("encoder.moduleConv2", 64, 128)
    basic("encoder.moduleConv3", 128, 256)
    conv("encoder.moduleConv4.0", 256, 512)
    bn("encoder.moduleConv4.1", 512)
    conv("encoder.moduleConv4.3", 512, 512)
    bn("encoder.moduleBatchNorm", 512)

    basic("decoder.moduleConv", 512, 512)
    deconv("decoder.moduleUpsample4.0", 512, 256)
    bn("decoder.moduleUpsample4.1", 256)
    basic("decoder.moduleDeconv3", 256, 256)
    deconv("decoder.moduleUpsample3.0", 256, 128)
    bn("decoder.moduleUpsample3.1", 128)
    basic("decoder.moduleDeconv2", 128, 128)
    deconv("decoder.moduleUpsample2.0", 128, 64)
    bn("decoder.moduleUpsample2.1", 64)
    basic("decoder.moduleDeconv1", 128, 64)
    conv("decoder.moduleDeconv1.6", 64, 3)

    for index, (cin, cout) in zip(
        (0, 3, 6, 9), ((3, 64), (64, 64), (64, 128), (128, HIDDEN)), strict=True
    ):
        conv(f"pred.encoder.{index}", cin, cout)
        bn(f"pred.encoder.{index + 1}", cout)
    for layer in range(LAYERS):
        prefix = f"pred.convlstm_list.{layer}"
        conv(f"{prefix}.conv_x.0", HIDDEN, 7 * HIDDEN, bias=False)
        conv(f"{prefix}.conv_h.0", HIDDEN, 4 * HIDDEN, bias=False)
        conv(f"{prefix}.conv_m.0", HIDDEN, 3 * HIDDEN, bias=False)
        conv(f"{prefix}.conv_o.0", 2 * HIDDEN, HIDDEN, bias=False)
        conv(f"{prefix}.conv_last", 2 * HIDDEN, HIDDEN, k=1, bias=False)

    deconv("st_decoder.0", 2 * HIDDEN, 128)
    bn("st_decoder.1", 128)
    deconv("st_decoder.3", 128, 64)
    bn("st_decoder.4", 64)
    return shapes


def random_reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of plausible scale: convs ~ 1/sqrt(fan_in), BN stats near (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in reference_layout().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif name.endswith("running_mean") or name.endswith("bias"):
            state[name] = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BN weight
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        else:
            transposed = "Upsample" in name or name.startswith("st_decoder")
            fan_in = (shape[0] if transposed else shape[1]) * shape[2] * shape[3]
            state[name] = torch.randn(shape, generator=generator) * (1.5 / fan_in**0.5)
    return state


def functional_forward(state: dict[str, torch.Tensor], frames: torch.Tensor, items: torch.Tensor):
    """The documented eval-mode forward on raw tensors: (prediction, queries, distance)."""

    def conv(x, name, stride=1, padding=1):
        return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), stride, padding)

    def bn(x, name):
        return F.batch_norm(
            x,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    def up(x, deconv_name, bn_name):  # transposed conv k3 s2 p1 op1, BN, ReLU
        weight, bias = state[f"{deconv_name}.weight"], state[f"{deconv_name}.bias"]
        return F.relu(bn(F.conv_transpose2d(x, weight, bias, 2, 1, 1), bn_name))

    def basic(x, name):
        x = F.relu(bn(conv(x, f"{name}.0"), f"{name}.1"))
        return F.relu(bn(conv(x, f"{name}.3"), f"{name}.4"))

    # Global-normality encoder -> memory queries.
    x = F.max_pool2d(basic(frames, "encoder.moduleConv1"), 2)
    x = F.max_pool2d(basic(x, "encoder.moduleConv2"), 2)
    x = F.max_pool2d(basic(x, "encoder.moduleConv3"), 2)
    x = F.relu(bn(conv(x, "encoder.moduleConv4.0"), "encoder.moduleConv4.1"))
    features = conv(x, "encoder.moduleConv4.3")
    batch, dim, fh, fw = features.shape
    queries = features.permute(0, 2, 3, 1).reshape(-1, dim)
    queries = queries / queries.norm(dim=1, keepdim=True)

    # Local-normality branch: per-frame encoder, 4 ST-LSTMs with zigzag memory, fusion head.
    size = (batch, HIDDEN, frames.shape[2] // 4, frames.shape[3] // 4)
    h = [torch.zeros(size) for _ in range(LAYERS)]
    c = [torch.zeros(size) for _ in range(LAYERS)]
    m = torch.zeros(size)
    for t in range(4):
        x = frames[:, 3 * t : 3 * t + 3]
        for index, stride in zip((0, 3, 6, 9), (2, 1, 2, 1), strict=True):
            x = F.relu(bn(conv(x, f"pred.encoder.{index}", stride), f"pred.encoder.{index + 1}"))
        for layer in range(LAYERS):
            cell = f"pred.convlstm_list.{layer}"
            gx = conv(x if layer == 0 else h[layer - 1], f"{cell}.conv_x.0").split(HIDDEN, 1)
            i_h, f_h, g_h, o_h = conv(h[layer], f"{cell}.conv_h.0").split(HIDDEN, 1)
            i_m, f_m, g_m = conv(m, f"{cell}.conv_m.0").split(HIDDEN, 1)
            c[layer] = torch.sigmoid(gx[1] + f_h + 1) * c[layer] + torch.sigmoid(
                gx[0] + i_h
            ) * torch.tanh(gx[2] + g_h)
            m = torch.sigmoid(gx[4] + f_m + 1) * m + torch.sigmoid(gx[3] + i_m) * torch.tanh(
                gx[5] + g_m
            )
            both = torch.cat([c[layer], m], 1)
            o = torch.sigmoid(gx[6] + o_h + conv(both, f"{cell}.conv_o.0"))
            h[layer] = o * torch.tanh(conv(both, f"{cell}.conv_last", padding=0))
    local = up(torch.cat([h[-1], m], 1), "st_decoder.0", "st_decoder.1")
    local = up(local, "st_decoder.3", "st_decoder.4")

    # Memory read (decoder sees the read alone) and the decoder with the fused local map.
    weights = torch.softmax(queries @ items.t(), dim=1)
    read = (weights @ items).reshape(batch, fh, fw, dim).permute(0, 3, 1, 2)
    for basic_name, up_name in (
        ("moduleConv", "moduleUpsample4"),
        ("moduleDeconv3", "moduleUpsample3"),
        ("moduleDeconv2", "moduleUpsample2"),
    ):
        x = basic(read if basic_name == "moduleConv" else x, f"decoder.{basic_name}")
        x = up(x, f"decoder.{up_name}.0", f"decoder.{up_name}.1")
    x = basic(torch.cat([x, local], 1), "decoder.moduleDeconv1")
    prediction = torch.tanh(conv(x, "decoder.moduleDeconv1.6"))

    best = items[(queries @ items.t()).argmax(dim=1)]
    return prediction, queries, ((queries - best) ** 2).mean()


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor], torch.Tensor]:
    """A saved reference-layout state_dict and items file, plus their in-memory values."""
    folder = tmp_path_factory.mktemp("reference")
    state = random_reference_state()
    items = init_memory_items(10, 512, generator=torch.Generator().manual_seed(1))
    torch.save(state, folder / "model.pth")
    torch.save(items, folder / "keys.pt")
    return folder / "model.pth", folder / "keys.pt", state, items


def test_layout_has_197_entries() -> None:
    assert len(reference_layout()) == 197


def test_reference_checkpoint_gives_the_reference_outputs(reference_files) -> None:
    model_path, items_path, state, items = reference_files
    model, loaded_items = load_reference_checkpoint(model_path, items_path)
    assert not model.training
    assert torch.equal(loaded_items, items)
    assert (model.channels, model.t_length, model.msize, model.fdim) == (3, 5, 10, 512)

    frames = torch.rand(1, 12, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        out = model.forward_infer(frames, loaded_items)
        expected = functional_forward(state, frames, items)
    prediction, queries, distance = expected
    assert prediction.std() > 0.05  # not a saturated or constant image
    torch.testing.assert_close(out.prediction, prediction, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.queries, queries, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.feature_distance, distance, atol=1e-6, rtol=1e-4)


def tiny_model(seed: int) -> LGNNet:
    torch.manual_seed(seed)
    return LGNNet(msize=4, fdim=16, mdim=16, hidden=8)


def test_own_checkpoint_round_trips(tmp_path: Path) -> None:
    model = tiny_model(0)
    items = model.forward_train(torch.rand(2, 12, 16, 16) * 2 - 1, init_memory_items(4, 16)).items
    model.eval()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    torch.save(items, tmp_path / "items.pt")

    fresh = tiny_model(1)
    load_model_weights(fresh, torch.load(tmp_path / "weights.pth", weights_only=True))
    fresh.eval()
    fresh_items = check_memory_items(torch.load(tmp_path / "items.pt", weights_only=True), 4, 16)
    frames = torch.rand(1, 12, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model.forward_infer(frames, items)
        actual = fresh.forward_infer(frames, fresh_items)
    for a, b in zip(expected, actual, strict=True):
        assert torch.equal(a, b)

    # The same files through the reference loader, with every size inferred.
    loaded, loaded_items = load_reference_checkpoint(
        tmp_path / "weights.pth", tmp_path / "items.pt"
    )
    assert (loaded.msize, loaded.fdim, loaded.pred.hidden) == (4, 16, 8)
    with torch.no_grad():
        assert torch.equal(
            loaded.forward_infer(frames, loaded_items).prediction,
            expected.prediction,
        )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_wrong_shape_names_first_offending_key_and_both_shapes() -> None:
    state = tiny_model(0).state_dict()
    state["pred.convlstm_list.2.conv_m.0.weight"] = torch.zeros(24, 8, 1, 1)
    state["decoder.moduleDeconv1.6.weight"] = torch.zeros(1, 64, 3, 3)  # later in order
    with pytest.raises(InputError) as error:
        load_model_weights(tiny_model(1), state, source="ckpt.pth")
    message = one_line(error)
    assert message.startswith("ckpt.pth: ")
    assert "'decoder.moduleDeconv1.6.weight'" in message
    assert "(1, 64, 3, 3)" in message and "(3, 64, 3, 3)" in message


def test_missing_and_unexpected_keys_are_named() -> None:
    state = tiny_model(0).state_dict()
    del state["st_decoder.1.running_var"]
    with pytest.raises(InputError, match=r"ckpt\.pth: missing entry 'st_decoder\.1\.running_var'"):
        load_model_weights(tiny_model(1), state, source="ckpt.pth")

    state = tiny_model(0).state_dict()
    state["decoder.extra.weight"] = torch.zeros(2)
    with pytest.raises(InputError, match=r"unexpected entry 'decoder\.extra\.weight'"):
        load_model_weights(tiny_model(1), state, source="ckpt.pth")


def test_wrapped_state_dicts_load() -> None:
    source = tiny_model(0)
    state = source.state_dict()
    for wrapped in (
        {f"module.{name}": value for name, value in state.items()},  # DataParallel / DDP
        {"state_dict": state, "epoch": 3},
        {"model": {f"module.{name}": value for name, value in state.items()}},
        source,
    ):
        target = tiny_model(1)
        load_model_weights(target, extract_state_dict(wrapped))
        for name, value in target.state_dict().items():
            assert torch.equal(value, state[name]), name


def test_pickled_whole_model_of_an_unknown_class_loads(tmp_path: Path) -> None:
    # The reference saves torch.save(model) of its own class; emulate a class that cannot be
    # imported when loading, wrapped in DataParallel as multi-GPU training leaves it.
    module = types.ModuleType("reference_release_network")

    class ConvAE(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            for name, child in inner.named_children():
                self.add_module(name, child)

    ConvAE.__module__, ConvAE.__qualname__ = module.__name__, "ConvAE"
    module.ConvAE = ConvAE
    sys.modules[module.__name__] = module
    try:
        source = tiny_model(0)
        torch.save(nn.DataParallel(ConvAE(source)), tmp_path / "model.pth")
    finally:
        del sys.modules[module.__name__]
    torch.save(init_memory_items(4, 16), tmp_path / "keys.pt")

    model, _ = load_reference_checkpoint(tmp_path / "model.pth", tmp_path / "keys.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name
    # evaluate.py / detect.py --model_dir read it the same way (sizes from the tensors).
    loaded = load_for_inference(model_dir=tmp_path / "model.pth", m_items_dir=tmp_path / "keys.pt")
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, source.state_dict()[name]), name

    with pytest.raises(InputError, match="weights_only"):
        load_reference_checkpoint(
            tmp_path / "model.pth", tmp_path / "keys.pt", allow_pickled_model=False
        )


def test_bad_items_shape_names_file_and_both_shapes(tmp_path: Path) -> None:
    torch.save(torch.rand(5, 16), tmp_path / "keys.pt")
    torch.save(tiny_model(0).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(InputError) as error:  # msize forced to 4 while the file holds 5 items
        load_reference_checkpoint(tmp_path / "weights.pth", tmp_path / "keys.pt", msize=4)
    message = one_line(error)
    assert "keys.pt" in message and "(5, 16)" in message and "(4, 16)" in message


def test_items_come_back_fp32_and_detached() -> None:
    items = torch.rand(4, 16, dtype=torch.float64, requires_grad=True)
    loaded = check_memory_items(items, 4, 16, source="items")
    assert loaded.dtype == torch.float32 and not loaded.requires_grad


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    torch.save(torch.rand(4, 16), tmp_path / "keys.pt")
    torch.save(tiny_model(0).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(InputError, match=r"not found: .*absent\.pth"):
        load_reference_checkpoint(tmp_path / "absent.pth", tmp_path / "keys.pt")
    with pytest.raises(InputError, match=r"not found: .*absent\.pt"):
        load_reference_checkpoint(tmp_path / "weights.pth", tmp_path / "absent.pt")

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"garbage\.pth"):
        load_reference_checkpoint(tmp_path / "garbage.pth", tmp_path / "keys.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.pt"):
        load_reference_checkpoint(tmp_path / "weights.pth", tmp_path / "empty.pt")


def test_checkpoints_written_before_model_args_still_load_and_resume(
    checkpoint: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    import random

    import numpy as np
    from conftest import train_tiny

    from model import checkpoint as checkpoint_format

    saved = checkpoint_format.read(checkpoint)
    # What train.py wrote before format version 2: no format entries, no model_args, the
    # RNG states with NumPy's generator state as an array.
    old_rng = {"python": random.getstate(), "numpy": np.random.get_state()}
    old_rng["torch"] = torch.get_rng_state()
    keys = ("model", "items", "optimizer", "scheduler", "epoch", "step", "args", "world_size")
    version_1 = {key: saved[key] for key in keys} | {"rng": old_rng, "rng_by_rank": [old_rng]}
    torch.save(version_1, tmp_path / "old.pth")

    upgraded = checkpoint_format.read(tmp_path / "old.pth")
    assert upgraded["model_args"] == saved["model_args"]
    assert upgraded["frame_size"] == saved["frame_size"] and upgraded["kind"] == "training"
    run = train_tiny(
        tiny_dataset, tmp_path / "exp", "--epochs", "2", "--resume", str(tmp_path / "old.pth")
    )
    assert checkpoint_format.read(run / "checkpoint.pth")["epoch"] == 2

    torch.save({**saved, "format_version": 99}, tmp_path / "future.pth")
    with pytest.raises(InputError, match="format 99, newer than this version reads"):
        checkpoint_format.read(tmp_path / "future.pth")


def test_each_weights_file_is_read_once_on_a_one_way_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our checkpoint, a reference state_dict and a whole pickled network: each file goes
    through torch.load once, its weights are flattened once and the network is loaded once."""
    import common.serialization
    import model.weights_file as weights_file
    from model import checkpoint as checkpoint_format

    network = tiny_model(0).eval()
    items = init_memory_items(4, 16)
    checkpoint_format.write(checkpoint_format.build(network, items, (16, 16)), tmp_path / "ck.pth")
    torch.save(network.state_dict(), tmp_path / "state.pth")
    torch.save(network, tmp_path / "network.pth")
    torch.save(items, tmp_path / "keys.pt")

    calls: dict[str, list[str]] = {"torch.load": [], "extract": [], "load_weights": []}

    def counted(name, function, key=lambda *args, **kwargs: str(args[0])):
        def wrapper(*args, **kwargs):
            calls[name].append(key(*args, **kwargs))
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "load", counted("torch.load", torch.load))
    monkeypatch.setattr(
        weights_file, "extract_state_dict",
        counted("extract", weights_file.extract_state_dict, lambda obj, source: source),
    )  # fmt: skip
    monkeypatch.setattr(
        weights_file, "load_model_weights",
        counted("load_weights", weights_file.load_model_weights, lambda m, s, source: source),
    )  # fmt: skip
    assert common.serialization.torch.load is torch.load  # the reader goes through the counter

    cases = {
        "ck.pth": dict(checkpoint=tmp_path / "ck.pth"),
        "state.pth": dict(model_dir=tmp_path / "state.pth", m_items_dir=tmp_path / "keys.pt"),
        "network.pth": dict(model_dir=tmp_path / "network.pth", m_items_dir=tmp_path / "keys.pt"),
    }
    for name, files in cases.items():
        for entries in calls.values():
            entries.clear()
        loaded = load_for_inference(**files)
        read = sorted(Path(path).name for path in calls["torch.load"])
        assert read == sorted(Path(path).name for path in files.values()), name
        assert len(calls["load_weights"]) == 1, name
        assert len(calls["extract"]) == (0 if name == "ck.pth" else 1), name
        for key, value in network.state_dict().items():
            torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_whose_items_are_not_a_tensor_is_refused_not_opened(tmp_path: Path) -> None:
    """A string in the items entry is reported as what it is, never taken for a file path."""
    from model import checkpoint as checkpoint_format

    saved = checkpoint_format.build(tiny_model(0), init_memory_items(4, 16), (16, 16))
    saved["items"] = str(tmp_path / "elsewhere.pt")
    checkpoint_format.write(saved, tmp_path / "ck.pth")
    with pytest.raises(InputError) as error:
        load_for_inference(tmp_path / "ck.pth")
    message = one_line(error)
    assert "ck.pth" in message and "expected a memory items tensor, found str" in message
