"""PyTorch eager references for `normlab bench --conv`: one conv, and the CIFAR ResNet-20 step.

torch is an optional extra (`pip install normlab[bench]`, or the CPU wheel:
`pip install torch --index-url https://download.pytorch.org/whl/cpu`), imported here only when
a reference is built, never by the library.

The ResNet-20 matches normlab's `MODELS.build("resnet20", preact=True, norm="batch")`: 3×3 stem
of 16 channels without norm; 3 stages × 3 pre-activation basic blocks (BN → ReLU → conv 3×3 →
BN → ReLU → conv 3×3) at 16/32/64 channels, strides 1/2/2, a 1×1 projection of the block's
pre-activated input where the shape changes; final BN → ReLU, global average pool, Linear; He
normal (fan-in) kernels. The step is the CIFAR recipe's: softmax cross-entropy, SGD with
Nesterov momentum 0.9, L2 5e-4 on conv/linear weights only (as normlab's `l2`).

    step = resnet20_step(x_NHWC, labels, channels_last=True)   # numpy in, zero-arg call out
    step()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

INSTALL = ("torch is not installed: the PyTorch references need the `bench` extra, e.g. "
           "`pip install torch --index-url https://download.pytorch.org/whl/cpu`")


def import_torch() -> Any:
    """The torch module, or ImportError with the install command."""
    try:
        import torch
    except ImportError as err:
        raise ImportError(INSTALL) from err
    return torch


def describe() -> dict[str, Any]:
    """torch's version and intra-op threads (what the comparison ran with)."""
    torch = import_torch()
    return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def _to_torch(torch: Any, x_NHWC: np.ndarray, channels_last: bool) -> Any:
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(x_NHWC, (0, 3, 1, 2))))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def conv_calls(x_NHWC: np.ndarray, kernel_HWIO: np.ndarray, stride: int, *,
               channels_last: bool) -> dict[str, Callable[[], Any]]:
    """{"fwd": y = conv(x) without autograd, "fwd_bwd": y and the gradients of ½Σy² w.r.t. x
    and the kernel}, padding ⌊k/2⌋ as normlab's conv layers."""
    torch = import_torch()
    k = kernel_HWIO.shape[0]
    w = torch.from_numpy(np.ascontiguousarray(np.transpose(kernel_HWIO, (3, 2, 0, 1))))
    if channels_last:
        w = w.contiguous(memory_format=torch.channels_last)
    x = _to_torch(torch, x_NHWC, channels_last)
    x_grad, w_grad = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    conv = torch.nn.functional.conv2d

    def fwd() -> None:
        with torch.no_grad():
            conv(x, w, stride=stride, padding=k // 2)

    def fwd_bwd() -> None:
        x_grad.grad = w_grad.grad = None
        y = conv(x_grad, w_grad, stride=stride, padding=k // 2)
        (0.5 * (y * y).sum()).backward()

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def _resnet20(torch: Any, num_classes: int) -> Any:
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.proj = (nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
                         if stride != 1 or c_in != c_out else None)

        def forward(self, x: Any) -> Any:
            pre = torch.relu(self.bn1(x))
            shortcut = x if self.proj is None else self.proj(pre)
            h = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
            return shortcut + h

    class ResNet20(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            blocks, c_in = [], 16
            for stage, c_out in enumerate((16, 32, 64)):
                for b in range(3):
                    blocks.append(Block(c_in, c_out, 2 if stage > 0 and b == 0 else 1))
                    c_in = c_out
            self.blocks = nn.Sequential(*blocks)
            self.bn = nn.BatchNorm2d(64)
            self.head = nn.Linear(64, num_classes)

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.bn(self.blocks(self.stem(x))))
            return self.head(h.mean(dim=(2, 3)))

    model = ResNet20()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return model


def resnet20_step(x_NHWC: np.ndarray, labels: np.ndarray, *, channels_last: bool,
                  threads: int | None = None, num_classes: int = 10) -> Callable[[], None]:
    """A zero-argument call running one ResNet-20 training step on (x, labels) (module doc);
    with `threads`, on that many intra-op threads (torch's setting restored after the step)."""
    torch = import_torch()
    torch.manual_seed(0)
    model = _resnet20(torch, num_classes)
    x = _to_torch(torch, x_NHWC.astype(np.float32), channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    y = torch.from_numpy(labels.astype(np.int64))
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.ndim > 1)]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4},
                           {"params": rest, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def step_on_threads() -> None:
        default = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            step()
        finally:
            torch.set_num_threads(default)

    return step if threads is None else step_on_threads
