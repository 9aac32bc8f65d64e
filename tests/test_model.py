"""LGNNet: sizes, shapes, the spatiotemporal recurrence against its equations, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import LGNNet, init_memory_items, update_memory

TINY = {"msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}


def tiny_model(seed: int = 0, **overrides: int) -> LGNNet:
    torch.manual_seed(seed)
    return LGNNet(**{**TINY, **overrides})


def randomise_batch_norms(model: nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so eval mode is exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = 0.5 + torch.rand(size, generator=generator)
            module.bias.data = 0.2 * torch.randn(size, generator=generator)
            module.running_mean = 0.2 * torch.randn(size, generator=generator)
            module.running_var = 0.5 + torch.rand(size, generator=generator)


def frames_for(batch: int, height: int, width: int, seed: int = 0, stacked: int = 12):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, stacked, height, width, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def default_model() -> LGNNet:
    torch.manual_seed(0)
    return LGNNet()


def test_default_parameter_counts(default_model: LGNNet) -> None:
    total = sum(p.numel() for p in default_model.parameters())
    unused_bn = sum(p.numel() for p in default_model.encoder.moduleBatchNorm.parameters())
    assert total == 22_753_667
    assert total - unused_bn == 22_752_643
    assert len(default_model.state_dict()) == 197


def test_default_checkpoint_key_shapes(default_model: LGNNet) -> None:
    shapes = {name: tuple(t.shape) for name, t in default_model.state_dict().items()}
    expected = {
        "encoder.moduleConv1.0.weight": (64, 12, 3, 3),
        "encoder.moduleConv4.3.weight": (512, 512, 3, 3),
        "encoder.moduleBatchNorm.running_var": (512,),
        "decoder.moduleUpsample4.0.weight": (512, 256, 3, 3),  # transposed: (in, out, k, k)
        "decoder.moduleUpsample3.0.weight": (256, 128, 3, 3),
        "decoder.moduleUpsample2.0.weight": (128, 64, 3, 3),
        "decoder.moduleDeconv1.0.weight": (64, 128, 3, 3),
        "decoder.moduleDeconv1.6.weight": (3, 64, 3, 3),
        "pred.encoder.0.weight": (64, 3, 3, 3),
        "pred.encoder.9.weight": (128, 128, 3, 3),
        "st_decoder.0.weight": (256, 128, 3, 3),
        "st_decoder.3.weight": (128, 64, 3, 3),
    }
    for layer in range(4):
        prefix = f"pred.convlstm_list.{layer}."
        expected[prefix + "conv_x.0.weight"] = (896, 128, 3, 3)
        expected[prefix + "conv_h.0.weight"] = (512, 128, 3, 3)
        expected[prefix + "conv_m.0.weight"] = (384, 128, 3, 3)
        expected[prefix + "conv_o.0.weight"] = (128, 256, 3, 3)
        expected[prefix + "conv_last.weight"] = (128, 256, 1, 1)
        assert not [name for name in shapes if name.startswith(prefix) and "bias" in name]
    for name, shape in expected.items():
        assert shapes[name] == shape, name


def test_default_model_runs_at_32x32(default_model: LGNNet) -> None:
    default_model.eval()
    with torch.no_grad():
        out = default_model.forward_infer(frames_for(1, 32, 32), init_memory_items(10, 512))
    assert out.prediction.shape == (1, 3, 32, 32)
    assert out.queries.shape == (16, 512)
    assert out.prediction.abs().max() <= 1


@pytest.mark.parametrize("height, width", [(16, 24), (32, 32), (40, 56)])
def test_output_shapes(height: int, width: int) -> None:
    model = tiny_model()
    items = init_memory_items(TINY["msize"], TINY["fdim"])
    frames = frames_for(2, height, width)
    queries = 2 * (height // 8) * (width // 8)

    encoded = model.encode(frames)
    assert encoded.features.shape == (2, TINY["fdim"], height // 8, width // 8)
    assert encoded.spatiotemporal.shape == (2, 64, height, width)

    train = model.forward_train(frames, items)
    assert train.prediction.shape == (2, 3, height, width)
    assert train.items.shape == items.shape
    assert train.compactness.shape == () and train.separateness.shape == ()

    model.eval()
    infer = model.forward_infer(frames, items)
    assert infer.prediction.shape == (2, 3, height, width)
    assert infer.queries.shape == (queries, TINY["fdim"])
    assert infer.feature_distance.shape == ()
    assert infer.prediction.abs().max() <= 1


@pytest.mark.parametrize("height, width", [(20, 24), (16, 30), (12, 12)])
def test_sizes_not_multiple_of_8_are_rejected(height: int, width: int) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(frames_for(1, height, width))


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="12"):
        tiny_model().encode(frames_for(1, 16, 16, stacked=9))


def test_sizes_follow_channels_and_t_length() -> None:
    model = tiny_model(channels=1, t_length=3)
    out = model.forward_train(frames_for(1, 16, 16, stacked=2), init_memory_items(4, 16))
    assert out.prediction.shape == (1, 1, 16, 16)
    assert model.encoder.moduleConv1[0].weight.shape[1] == 2


def reference_spatiotemporal(model: LGNNet, frames: torch.Tensor) -> torch.Tensor:
    """The local-normality branch in eval mode, step by step on the raw weights."""

    def conv_bn_relu(x, conv: nn.Conv2d, bn: nn.BatchNorm2d, stride: int) -> torch.Tensor:
        x = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=1)
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
        return F.relu(x)

    def deconv_bn_relu(x, deconv: nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> torch.Tensor:
        x = F.conv_transpose2d(x, deconv.weight, deconv.bias, 2, 1, output_padding=1)
        x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
        return F.relu(x)

    enc = model.pred.encoder
    cells = model.pred.convlstm_list
    channels, hidden_size = model.channels, cells[0].conv_h[0].weight.shape[1]
    steps = frames.shape[1] // channels
    batch, height, width = frames.shape[0], frames.shape[2] // 4, frames.shape[3] // 4
    h = [torch.zeros(batch, hidden_size, height, width) for _ in cells]
    c = [torch.zeros(batch, hidden_size, height, width) for _ in cells]
    m = torch.zeros(batch, hidden_size, height, width)

    def conv3(x, weight):
        return F.conv2d(x, weight, padding=1)

    for t in range(steps):
        x = frames[:, t * channels : (t + 1) * channels]
        x = conv_bn_relu(x, enc[0], enc[1], stride=2)
        x = conv_bn_relu(x, enc[3], enc[4], stride=1)
        x = conv_bn_relu(x, enc[6], enc[7], stride=2)
        x = conv_bn_relu(x, enc[9], enc[10], stride=1)
        for layer, cell in enumerate(cells):
            cell_input = x if layer == 0 else h[layer - 1]
            gx = conv3(cell_input, cell.conv_x[0].weight).chunk(7, dim=1)
            gh = conv3(h[layer], cell.conv_h[0].weight).chunk(4, dim=1)
            gm = conv3(m, cell.conv_m[0].weight).chunk(3, dim=1)
            i_x, f_x, g_x, i2_x, f2_x, g2_x, o_x = gx
            i_h, f_h, g_h, o_h = gh
            i_m, f_m, g_m = gm
            c_new = torch.sigmoid(f_x + f_h + 1.0) * c[layer] + torch.sigmoid(
                i_x + i_h
            ) * torch.tanh(g_x + g_h)
            m_new = torch.sigmoid(f2_x + f_m + 1.0) * m + torch.sigmoid(i2_x + i_m) * torch.tanh(
                g2_x + g_m
            )
            both = torch.cat([c_new, m_new], dim=1)
            o = torch.sigmoid(o_x + o_h + conv3(both, cell.conv_o[0].weight))
            h[layer] = o * torch.tanh(F.conv2d(both, cell.conv_last.weight))
            c[layer], m = c_new, m_new

    head = model.st_decoder
    fused = deconv_bn_relu(torch.cat([h[-1], m], dim=1), head[0], head[1])
    return deconv_bn_relu(fused, head[3], head[4])


@pytest.mark.parametrize("num_layers", [4, 2])
def test_spatiotemporal_branch_matches_cell_equations(num_layers: int) -> None:
    model = tiny_model(seed=1, num_layers=num_layers)
    randomise_batch_norms(model, seed=2)
    # Larger recurrent weights than the default init, so every gate term matters.
    with torch.no_grad():
        for cell in model.pred.convlstm_list:
            for conv in (cell.conv_x[0], cell.conv_h[0], cell.conv_m[0], cell.conv_o[0]):
                conv.weight.mul_(3.0)
    model.eval()
    frames = frames_for(2, 16, 24, seed=3)
    with torch.no_grad():
        expected = reference_spatiotemporal(model, frames)
        actual = model.encode(frames).spatiotemporal
    assert expected.abs().mean() > 1e-2  # a meaningful, non-degenerate map
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_gradients_reach_both_branches_but_not_the_items() -> None:
    model = tiny_model(seed=4)
    model.train()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(5))
    items.requires_grad_(True)
    frames = frames_for(2, 16, 16, seed=6)
    target = frames_for(2, 16, 16, seed=7, stacked=3)

    out = model.forward_train(frames, items)
    loss = F.mse_loss(out.prediction, target) + out.compactness + out.separateness
    loss.backward()

    for name, parameter in model.named_parameters():
        if name.startswith("encoder.moduleBatchNorm."):
            assert parameter.grad is None, name  # declared but unused, as in the reference
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for branch in ("encoder.", "pred.", "st_decoder.", "decoder."):
        assert any(name.startswith(branch) for name, _ in model.named_parameters())
    assert items.grad is None
    assert not out.items.requires_grad and out.items.grad_fn is None


def test_eval_forward_is_deterministic() -> None:
    model = tiny_model(seed=8)
    randomise_batch_norms(model, seed=9)
    model.eval()
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(10))
    frames = frames_for(2, 16, 16, seed=11)
    first = model.forward_infer(frames, items)
    second = model.forward_infer(frames, items)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # forward(train=False) is forward_infer.
    assert torch.equal(model(frames, items, train=False).prediction, first.prediction)


def test_train_forward_updates_items() -> None:
    model = tiny_model(seed=12)
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(13))
    before = items.clone()
    out = model.forward_train(frames_for(2, 16, 16, seed=14), items)
    assert torch.equal(items, before)  # the input is not modified in place
    assert not torch.allclose(out.items, items)
    torch.testing.assert_close(out.items.norm(dim=1), torch.ones(4))
    assert out.items.dtype == torch.float32


def test_outputs_live_on_the_input_device() -> None:
    model = tiny_model()
    out = model.forward_train(frames_for(1, 16, 16), init_memory_items(4, 16))
    assert all(t.device == torch.device("cpu") for t in out)


def test_model_package_never_picks_a_device_itself() -> None:
    # On PyTorch's meta device every tensor has a shape and no data: any tensor the model
    # made on a device of its own choosing (CPU or CUDA) would meet the meta inputs and fail.
    meta = torch.device("meta")
    model = tiny_model().to(meta)
    items = init_memory_items(4, 16).to(meta)
    trained = model.forward_train(frames_for(2, 16, 24).to(meta), items)
    inferred = model.eval().forward_infer(frames_for(1, 16, 24).to(meta), items)
    updated = update_memory(inferred.queries, items)
    for tensor in (*trained, *inferred, updated):
        assert tensor.device == meta
    assert trained.prediction.shape == (2, 3, 16, 24) and updated.shape == (4, 16)
