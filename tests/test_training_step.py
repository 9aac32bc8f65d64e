"""One training step against the method, written out literally: per-time-step BatchNorm in the
spatiotemporal branch, the memory read, the three losses, every gradient, every BatchNorm
buffer and the item update."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import LGNNet, init_memory_items

TINY = {"msize": 4, "fdim": 16, "mdim": 16, "hidden": 8}
LOSS_COMPACT, LOSS_SEPARATE = 10.0, 5.0  # the reference release's loss weights


def windows_for(batch: int, t_length: int, size: int, seed: int, channels: int = 3):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, t_length * channels, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("t_length", [5, 3, 7])
def test_first_batch_norm_tracks_every_time_step(t_length: int) -> None:
    """After one training forward from fresh BatchNorms, the per-frame encoder's first
    BatchNorm holds the momentum-0.1 moving average of the per-step statistics of the first
    convolution's outputs, updated once per input frame."""
    torch.manual_seed(0)
    model = LGNNet(t_length=t_length, **TINY).train()
    windows = windows_for(3, t_length, 16, seed=1)
    inputs = windows[:, : (t_length - 1) * 3]
    conv, norm = model.pred.encoder[0], model.pred.encoder[1]

    expected_mean, expected_var = torch.zeros(64), torch.ones(64)
    with torch.no_grad():
        for t in range(t_length - 1):
            out = F.conv2d(inputs[:, 3 * t : 3 * t + 3], conv.weight, conv.bias, 2, 1)
            step_mean = out.mean(dim=(0, 2, 3))
            step_var = out.var(dim=(0, 2, 3), unbiased=True)  # PyTorch's running variance
            expected_mean = 0.9 * expected_mean + 0.1 * step_mean
            expected_var = 0.9 * expected_var + 0.1 * step_var
        model.forward_train(inputs, init_memory_items(4, 16))

    assert int(norm.num_batches_tracked) == t_length - 1
    torch.testing.assert_close(norm.running_mean, expected_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(norm.running_var, expected_var, atol=1e-6, rtol=1e-5)
    # The other branches see each window once per step.
    assert int(model.encoder.moduleConv1[1].num_batches_tracked) == 1
    assert int(model.st_decoder[1].num_batches_tracked) == 1


class LiteralReference:
    """LGN-Net's training forward from the method's description, on copies of a model's
    parameters and buffers, one input frame at a time in the spatiotemporal branch."""

    def __init__(self, model: LGNNet) -> None:
        self.params = {
            name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()
        }
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.channels = model.channels
        self.cells = len(model.pred.convlstm_list)
        self.hidden = model.pred.hidden

    def conv(self, name: str, x: torch.Tensor, stride: int = 1, padding: int = 1):
        return F.conv2d(x, self.params[f"{name}.weight"], self.params.get(f"{name}.bias"),
                        stride, padding)  # fmt: skip

    def up(self, name: str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
        return F.conv_transpose2d(x, weight, bias, stride=2, padding=1, output_padding=1)

    def norm(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Training-mode BatchNorm over this call's batch; one running-statistic update."""
        self.buffers[f"{name}.num_batches_tracked"] += 1
        return F.batch_norm(
            x, self.buffers[f"{name}.running_mean"], self.buffers[f"{name}.running_var"],
            self.params[f"{name}.weight"], self.params[f"{name}.bias"],
            training=True, momentum=0.1, eps=1e-5,
        )  # fmt: skip

    def basic(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(f"{name}.1", self.conv(f"{name}.0", x)))
        return F.relu(self.norm(f"{name}.4", self.conv(f"{name}.3", x)))

    def query_encoder(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.basic("encoder.moduleConv1", x), 2)
        x = F.max_pool2d(self.basic("encoder.moduleConv2", x), 2)
        x = F.max_pool2d(self.basic("encoder.moduleConv3", x), 2)
        x = F.relu(self.norm("encoder.moduleConv4.1", self.conv("encoder.moduleConv4.0", x)))
        return self.conv("encoder.moduleConv4.3", x)

    def frame_encoder(self, frame: torch.Tensor) -> torch.Tensor:
        x = frame
        for conv, norm, stride in ((0, 1, 2), (3, 4, 1), (6, 7, 2), (9, 10, 1)):
            x = F.relu(self.norm(f"pred.encoder.{norm}", self.conv(f"pred.encoder.{conv}", x,
                                                                     stride)))  # fmt: skip
        return x

    def cell(self, layer: int, x, h, c, m):
        name = f"pred.convlstm_list.{layer}"
        i_x, f_x, g_x, i2_x, f2_x, g2_x, o_x = self.conv(f"{name}.conv_x.0", x).chunk(7, 1)
        i_h, f_h, g_h, o_h = self.conv(f"{name}.conv_h.0", h).chunk(4, 1)
        i_m, f_m, g_m = self.conv(f"{name}.conv_m.0", m).chunk(3, 1)
        c_new = torch.sigmoid(f_x + f_h + 1.0) * c + torch.sigmoid(i_x + i_h) * torch.tanh(
            g_x + g_h
        )
        m_new = torch.sigmoid(f2_x + f_m + 1.0) * m + torch.sigmoid(i2_x + i_m) * torch.tanh(
            g2_x + g_m
        )
        both = torch.cat([c_new, m_new], 1)
        o = torch.sigmoid(o_x + o_h + self.conv(f"{name}.conv_o.0", both))
        h_new = o * torch.tanh(self.conv(f"{name}.conv_last", both, padding=0))
        return h_new, c_new, m_new

    def spatiotemporal(self, inputs: torch.Tensor) -> torch.Tensor:
        steps = inputs.shape[1] // self.channels
        batch, height, width = inputs.shape[0], inputs.shape[2] // 4, inputs.shape[3] // 4
        zeros = torch.zeros(batch, self.hidden, height, width)
        h, c, m = [zeros] * self.cells, [zeros] * self.cells, zeros
        for t in range(steps):  # the reference's time loop: one frame's batch at a time
            x = self.frame_encoder(inputs[:, t * self.channels : (t + 1) * self.channels])
            for layer in range(self.cells):
                h[layer], c[layer], m = self.cell(layer, x if layer == 0 else h[layer - 1],
                                                  h[layer], c[layer], m)  # fmt: skip
        x = F.relu(self.norm("st_decoder.1", self.up("st_decoder.0", torch.cat([h[-1], m], 1))))
        return F.relu(self.norm("st_decoder.4", self.up("st_decoder.3", x)))

    def decoder(self, read: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        x = self.basic("decoder.moduleConv", read)
        for up, basic in (
            ("moduleUpsample4", "moduleDeconv3"),
            ("moduleUpsample3", "moduleDeconv2"),
        ):
            x = F.relu(self.norm(f"decoder.{up}.1", self.up(f"decoder.{up}.0", x)))
            x = self.basic(f"decoder.{basic}", x)
        x = F.relu(self.norm("decoder.moduleUpsample2.1", self.up("decoder.moduleUpsample2.0", x)))
        x = self.basic("decoder.moduleDeconv1", torch.cat([x, local], 1))
        return torch.tanh(self.conv("decoder.moduleDeconv1.6", x))

    def step(self, windows: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs, target = windows[:, : -self.channels], windows[:, -self.channels :]
        features = self.query_encoder(inputs)
        batch, dim, height, width = features.shape
        queries = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, dim), dim=1)
        scores = queries @ items.t()
        score_memory = torch.softmax(scores, dim=1)  # over the items, per query
        score_query = torch.softmax(scores, dim=0)  # over the queries, per item
        read = (score_memory.detach() @ items).reshape(batch, height, width, dim)
        prediction = self.decoder(read.permute(0, 3, 1, 2), self.spatiotemporal(inputs))

        ranked = score_memory.argsort(dim=1, descending=True)
        best, second = items[ranked[:, 0]], items[ranked[:, 1]]
        compactness = ((queries - best) ** 2).mean()
        # PyTorch's triplet margin loss: L2 distances with eps 1e-6 added to the difference.
        to_best = (queries - best + 1e-6).norm(dim=1)
        to_second = (queries - second + 1e-6).norm(dim=1)
        separateness = torch.clamp(to_best - to_second + 1.0, min=0).mean()
        pixel = ((prediction - target) ** 2).mean()
        loss = pixel + LOSS_COMPACT * compactness + LOSS_SEPARATE * separateness
        loss.backward()

        detached = queries.detach()
        updates = torch.zeros_like(items)
        for item in range(items.shape[0]):  # a slow loop over items, as the rule is worded
            assigned = (ranked[:, 0] == item).nonzero().flatten()
            column = score_query[:, item].detach()
            for j in assigned.tolist():
                updates[item] += column[j] / column.max() * detached[j]
        return {
            "prediction": prediction.detach(),
            "pixel": pixel.detach(),
            "compactness": compactness.detach(),
            "separateness": separateness.detach(),
            "items": F.normalize(items + updates, dim=1),
        }


@pytest.mark.parametrize("t_length", [5, 3])
def test_training_step_equals_a_literal_per_frame_reference(t_length: int) -> None:
    torch.manual_seed(3)
    model = LGNNet(t_length=t_length, **TINY).train()
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    reference = LiteralReference(model)
    windows = windows_for(4, t_length, 16, seed=4)
    items = init_memory_items(4, 16, generator=torch.Generator().manual_seed(5))

    expected = reference.step(windows, items.clone())
    out = model.forward_train(windows[:, :-3], items.clone())
    pixel = F.mse_loss(out.prediction, windows[:, -3:])
    (pixel + LOSS_COMPACT * out.compactness + LOSS_SEPARATE * out.separateness).backward()

    tolerance = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(out.prediction.detach(), expected["prediction"], **tolerance)
    torch.testing.assert_close(pixel.detach(), expected["pixel"], **tolerance)
    torch.testing.assert_close(out.compactness.detach(), expected["compactness"], **tolerance)
    torch.testing.assert_close(out.separateness.detach(), expected["separateness"], **tolerance)
    torch.testing.assert_close(out.items, expected["items"], **tolerance)
    assert not torch.equal(out.items, items)  # the step did move the memory
    for name, parameter in model.named_parameters():
        expected_grad = reference.params[name].grad
        if expected_grad is None:  # the reference's unused BatchNorm(512)
            assert parameter.grad is None, name
            continue
        torch.testing.assert_close(parameter.grad, expected_grad, **tolerance, msg=name)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, reference.buffers[name], **tolerance, msg=name)
    steps = t_length - 1
    assert int(model.pred.encoder[1].num_batches_tracked) == steps
    assert int(model.decoder.moduleDeconv1[1].num_batches_tracked) == 1


def test_eval_mode_encodes_all_frames_in_one_batch_with_the_same_result() -> None:
    """In eval mode the batched per-frame encoder equals the per-step one."""
    torch.manual_seed(6)
    model = LGNNet(**TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    frames = windows_for(2, 5, 16, seed=7)[:, :12]
    stepwise = copy.deepcopy(model)
    stepwise.pred.train()
    for module in stepwise.pred.modules():  # per-step loop, but running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    with torch.no_grad():
        batched = model.pred(frames)
        looped = stepwise.pred(frames)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
