"""Horizontal fusion (HFTA, Wang et al., MLSys 2021): K training runs of one architecture as one
grouped network, so that the device runs K-times-larger kernels while the runs stay independent.

`fuse` turns K models into a `FusedNet` in which member k computes what model k computes:
convolutions become grouped convolutions (one group per member), BatchNorm runs over K times the
channels (statistics stay per channel, so per member), linear layers become one batched matmul
(`GroupedLinear`). Member k's images are channels ``[k*C, (k+1)*C)`` of the input
(`stack_inputs`); the logits come out as ``(B, K, classes)``.

Layout invariant (everything here relies on it). Every fused parameter, gradient, momentum
buffer and BatchNorm statistic ``t`` holds the members' tensors as K equal blocks along dim 0:
conv and BatchNorm tensors are ``(K*C, ...)`` for members' ``(C, ...)``, member k being
``t.unflatten(0, (K, -1))[k]``; `GroupedLinear`'s weight and bias are ``(K, out, in)`` and
``(K, out)``, member k being ``t[k]``. Either way member k is row k of ``t.view(K, -1)`` for a
contiguous ``t``; and as dim 0 stays outermost in channels-last weights too, row k of
`member_blocks` (the storage cut into K blocks) is member k for both memory formats, in memory
order. The one exception is BatchNorm's ``num_batches_tracked``: a 0-d counter shared by all
members (they step together; `fuse` takes member 0's).
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plainnet.models.resnet import PadShortcut

CL = torch.channels_last

# Leaf modules that treat every channel alike. Other leaves are refused even without parameters:
# a parameter-free module can still mix channels (PadShortcut does: it has a grouped version).
CHANNEL_AGNOSTIC = (nn.ReLU, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)
FUSABLE = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear)

# How a member's state_dict entry sits in the fused one (module docstring).
STACKED, INDEXED, SHARED = "stacked", "indexed", "shared"


class GroupedLinear(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` as one batched matmul: input
    ``(B, K*in)`` with member k in columns ``[k*in, (k+1)*in)``, output ``(B, K*out)`` alike.
    ``weight`` ``(K, out, in)`` and ``bias`` ``(K, out)`` start uninitialised (`fuse` fills them).
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.members, self.in_features, self.out_features = members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        xs = x.unflatten(1, (self.members, self.in_features)).transpose(0, 1)  # (K, B, in)
        wt = self.weight.transpose(1, 2)  # (K, in, out)
        # baddbmm: as fast on the 2-core CPU as bmm + add or einsum (forward + backward at batch
        # 100, 512 -> 512 and 512 -> 100, within 3 %), and bitwise equal to each member's
        # F.linear (one GEMM starting from the bias), which bmm + add and einsum are not.
        y = torch.bmm(xs, wt) if self.bias is None else torch.baddbmm(self.bias[:, None], xs, wt)
        return y.transpose(0, 1).flatten(1)  # (B, K*out)

    def extra_repr(self) -> str:
        return f"members={self.members}, in={self.in_features}, out={self.out_features}"


class GroupedPadShortcut(nn.Module):
    """`PadShortcut` for K members: average pooling, then each member's zero channels after
    that member's own: ``(B, K*Cin, H, W) -> (B, K*(Cin + extra), H', W')``."""

    def __init__(self, shortcut: PadShortcut, members: int):
        super().__init__()
        self.members, self.extra, self.pool = members, shortcut.extra, shortcut.pool

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        b, channels, h, w = x.shape
        cin = channels // self.members
        # The input's memory format, as PadShortcut's F.pad keeps it (not so on a 5-d view).
        fmt = CL if _channels_last(x) else torch.contiguous_format
        shape = (b, self.members * (cin + self.extra), h, w)
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
        out.unflatten(1, (self.members, -1))[:, :, :cin] = x.unflatten(1, (self.members, cin))
        return out


class FusedNet(nn.Module):
    """K fused members of one architecture, made by `fuse`.

    The instance's class derives from `FusedNet` and the members' class, so the members' own
    ``forward`` runs the fused layers and ``named_parameters()`` / ``named_buffers()`` /
    ``state_dict()`` list a member's names in a member's order (with fused shapes). The class is
    made at run time and does not pickle: save ``state_dict()`` or `member_state_dict`.
    """

    members: int  # K
    _layout: dict[str, tuple[str, torch.Size]]  # state_dict key -> (kind, member shape)
    _decayed_names: tuple[str, ...] | None

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, K*C, H, W)``, member k's images in channels ``[k*C, (k+1)*C)``, either
        memory format -> logits ``(B, K, classes)``."""
        return super().forward(x).unflatten(1, (self.members, -1))

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The fused counterparts, by name and in order, of a member's `decayed_parameters`."""
        if self._decayed_names is None:
            raise AttributeError("the fused members' class has no decayed_parameters()")
        return [self.get_parameter(name) for name in self._decayed_names]


@functools.cache
def _fused_class(arch: type[nn.Module]) -> type[FusedNet]:
    # FusedNet first in the method order: its forward wraps the architecture's.
    return type(f"Fused{arch.__name__}", (FusedNet, arch), {"__module__": __name__})


def fuse(models: Sequence[nn.Module]) -> FusedNet:
    """One `FusedNet` computing the K >= 1 ``models`` side by side: they must share class,
    module tree and tensor names and shapes (else ValueError), and are left untouched. The
    fused net is in the first model's train/eval mode, on its device."""
    models = list(models)
    if not models:
        raise ValueError("fuse needs at least one model")
    _check_same_architecture(models)
    first = models[0]
    # Share, not copy, the first model's tensors in the deep copy: each belongs to a module
    # that is replaced below (or fuse raises), so copies would be wasted.
    fused = copy.deepcopy(first, {id(t): t for t in (*first.parameters(), *first.buffers())})
    _replace_modules(fused, [dict(m.named_modules()) for m in models], prefix="")
    fused.__class__ = _fused_class(type(first))
    fused.members = len(models)
    member_state = first.state_dict()
    fused._layout = {}
    for name, t in fused.state_dict().items():
        kind = STACKED if t.dim() == member_state[name].dim() else INDEXED
        kind = SHARED if name.endswith("num_batches_tracked") else kind
        fused._layout[name] = (kind, member_state[name].shape)
    fused._decayed_names = None
    if hasattr(first, "decayed_parameters"):
        names = {id(p): n for n, p in first.named_parameters()}
        fused._decayed_names = tuple(names[id(p)] for p in first.decayed_parameters())
    return fused


def _check_same_architecture(models: list[nn.Module]) -> None:
    """ValueError unless every model has the first one's module tree (names, classes and
    ``extra_repr``, i.e. hyperparameters) and tensors (names, shapes, dtypes, devices)."""

    def signature(m: nn.Module) -> list[tuple]:
        modules = [(n or "model", type(x).__name__, x.extra_repr()) for n, x in m.named_modules()]
        tensors = [*m.named_parameters(), *m.named_buffers()]
        return modules + [(n, tuple(t.shape), t.dtype, t.device) for n, t in tensors]

    ref = signature(models[0])
    for i, model in enumerate(models[1:], start=1):
        for mine, theirs in itertools.zip_longest(signature(model), ref):
            if mine != theirs:
                raise ValueError(f"model {i} differs from model 0: {mine} against {theirs}")


def _replace_modules(parent: nn.Module, members: list[dict], prefix: str) -> None:
    """Replace below ``parent`` (in the deep copy) every fusable module by the fused version of
    the members' modules of that name (``members[i]``: model i's ``named_modules()``)."""
    own = [n for n, _ in parent.named_parameters(recurse=False)]
    own += [n for n, _ in parent.named_buffers(recurse=False)]
    if own:
        where = repr(prefix[:-1]) if prefix else "the model"
        raise ValueError(f"cannot fuse {where} ({type(parent).__name__}): own tensors {own}")
    for name, child in parent.named_children():
        path = f"{prefix}{name}"
        if type(child) in FUSABLE:  # exact types: a subclass may compute something else
            parent._modules[name] = _fused_module([m[path] for m in members])
        elif type(child) is PadShortcut:
            parent._modules[name] = GroupedPadShortcut(child, len(members))
        elif next(child.children(), None) is not None:  # a container: its children decide
            _replace_modules(child, members, prefix=f"{path}.")
        elif type(child) not in CHANNEL_AGNOSTIC:
            raise ValueError(
                f"cannot fuse {path!r} ({type(child).__name__}): not a Conv2d, BatchNorm1d/2d, "
                "Linear, PadShortcut or known channel-agnostic module"
            )


def _fused_module(group: list[nn.Module]) -> nn.Module:
    """The fused version of the members' Conv2d, BatchNorm1d/2d or Linear ``group``: built on
    the meta device (no initialisation to compute, no draw from the global RNG), then given the
    members' parameters and buffers stacked along dim 0."""
    m, k = group[0], len(group)
    with torch.device("meta"):
        if isinstance(m, nn.Conv2d):
            kw = {a: getattr(m, a) for a in ("kernel_size", "stride", "padding", "dilation")}
            fused = nn.Conv2d(
                k * m.in_channels, k * m.out_channels, groups=k * m.groups,
                bias=m.bias is not None, padding_mode=m.padding_mode, **kw,
            )  # fmt: skip
        elif isinstance(m, nn.Linear):
            fused = GroupedLinear(k, m.in_features, m.out_features, m.bias is not None)
        else:
            kw = {a: getattr(m, a) for a in ("eps", "momentum", "affine", "track_running_stats")}
            fused = type(m)(k * m.num_features, **kw)
    stack = torch.stack if isinstance(m, nn.Linear) else torch.cat  # (K, out, in) / (K*C, ...)
    for name, p in m.named_parameters(recurse=False):
        tensors = [x.get_parameter(name).detach() for x in group]
        setattr(fused, name, nn.Parameter(stack(tensors), p.requires_grad))
    for name, b in m.named_buffers(recurse=False):
        # One num_batches_tracked for all (they step together). BatchNorm reads it only when
        # momentum is None (plainnet's is 0.01).
        shared = name == "num_batches_tracked"
        setattr(fused, name, b.clone() if shared else stack([x.get_buffer(name) for x in group]))
    return fused


def stack_inputs(
    batches: Tensor, *, memory_format: torch.memory_format = torch.contiguous_format
) -> Tensor:
    """Members' batches ``(K, B, C, H, W)`` -> the fused input ``(B, K*C, H, W)``, member k in
    channels ``[k*C, (k+1)*C)``, in ``memory_format`` (contiguous or channels-last), one copy."""
    k, b, c, h, w = batches.shape
    if memory_format == CL:
        # (B, H, W, K, C) in memory is the channels-last layout of (B, K*C, H, W).
        return batches.permute(1, 3, 4, 0, 2).reshape(b, h, w, k * c).permute(0, 3, 1, 2)
    return batches.transpose(0, 1).reshape(b, k * c, h, w).contiguous(memory_format=memory_format)


def member_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Each member's mean cross-entropy ``(K,)`` from logits ``(B, K, classes)`` and labels
    ``(K, B)``. The gradient of its sum in member k's logits is that of member k's own
    ``F.cross_entropy`` (bitwise on the CPU)."""
    b, k, classes = logits.shape
    # Log-softmax over contiguous rows of classes, as for one model's (B, classes) logits.
    flat = logits.reshape(b * k, classes)
    losses = F.cross_entropy(flat, labels.t().reshape(-1), reduction="none")
    return losses.view(b, k).mean(0)


def _channels_last(t: Tensor) -> bool:
    """A 4-d tensor in channels-last layout (and not also contiguous, as when H = W = 1)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=CL)


def member_blocks(t: Tensor, members: int) -> Tensor:
    """``(K, -1)`` view of a fused tensor (contiguous, or channels-last 4-d) whose row k is
    member k's tensor in memory order (the layout invariant). ValueError for other layouts."""
    if _channels_last(t):
        t = t.permute(0, 2, 3, 1)  # channels-last storage order: a contiguous (N, H, W, C) view
    try:
        return t.view(members, -1)
    except RuntimeError as err:
        raise ValueError(f"shape {tuple(t.shape)}, strides {t.stride()}: not K blocks") from err


def _member_of(fused: FusedNet, name: str, t: Tensor, k: int) -> Tensor:
    """Member k's part of ``t``, a fused tensor of state_dict key ``name`` (or a tensor of its
    shape, such as its momentum buffer): a view, in ``t``'s memory format."""
    kind = fused._layout[name][0]
    if kind == SHARED:
        return t
    return t[k] if kind == INDEXED else t.unflatten(0, (fused.members, -1))[k]


def _check_member(fused: FusedNet, k: int) -> None:
    if not 0 <= k < fused.members:
        raise ValueError(f"member {k} out of range: the fused net has {fused.members}")


def member_state_dict(fused: FusedNet, k: int) -> dict[str, Tensor]:
    """Member k as a single model's ``state_dict`` (a fused model's keys, shapes and order;
    copies, in the fused model's memory format)."""
    _check_member(fused, k)
    return {name: _member_of(fused, name, t, k).clone() for name, t in fused.state_dict().items()}


def load_member_state_dict(fused: FusedNet, k: int, state: dict[str, Tensor]) -> None:
    """Copy a single model's ``state_dict`` into member k (ValueError for missing, unexpected or
    misshapen keys). ``num_batches_tracked`` is shared: loading sets it for every member."""
    _check_member(fused, k)
    missing, unexpected = fused._layout.keys() - state.keys(), state.keys() - fused._layout.keys()
    if missing or unexpected:
        raise ValueError(
            f"state_dict keys missing: {sorted(missing)}, unexpected: {sorted(unexpected)}"
        )
    for name, value in state.items():
        if value.shape != fused._layout[name][1]:
            raise ValueError(f"state_dict key {name!r}: shape {tuple(value.shape)}, not a member's")
    current = fused.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            _member_of(fused, name, current[name], k).copy_(value)


def _optimizer_order(fused: FusedNet, groups: list[dict], params: Sequence | None) -> list[str]:
    """The parameter name of each optimizer index (``params``: see `fuse_optimizer_states`)."""
    if params is None and len(groups) > 1:
        raise ValueError(f"an optimizer of {len(groups)} groups: pass params= in its order")
    if params is None:
        params = [p for p in fused.parameters() if p.requires_grad]
    sizes = [len(g["params"]) for g in groups]
    names = {id(p): n for n, p in fused.named_parameters()}
    if sum(sizes) != len(params) or any(id(p) not in names for p in params):
        msg = f"optimizer groups of {sizes} tensors, not the fused net's {len(params)}"
        raise ValueError(f"{msg}; pass params= in the optimizer's order")
    return [names[id(p)] for p in params]


def _map_state(states: list[dict], order: list[str], convert: Callable) -> dict:
    """An optimizer ``state`` from ``states`` (same keys): ``convert(name, [that entry of each])``
    for per-parameter tensors (momentum buffers), a copy of the first's for anything else."""
    return {
        index: {
            key: convert(order[index], [s[index][key] for s in states])
            if isinstance(value, Tensor) and value.dim() > 0
            else copy.deepcopy(value)
            for key, value in entry.items()
        }
        for index, entry in states[0].items()
    }


def member_optimizer_state(
    fused_state: dict, fused: FusedNet, k: int, *, params: Sequence | None = None
) -> dict:
    """What member k's own SGD ``state_dict()`` would hold, from the fused optimizer's: the same
    param groups and indices, member k's block of each momentum buffer (a copy, in the fused
    buffer's memory format). ``params``: as in `fuse_optimizer_states`."""
    _check_member(fused, k)

    def split(name: str, tensors: list[Tensor]) -> Tensor:
        if tensors[0].shape != fused.get_parameter(name).shape:
            raise ValueError(f"optimizer state of {name!r}: shape {tuple(tensors[0].shape)}")
        # clone, not deepcopy: a deep copy of a view copies the whole fused storage.
        return _member_of(fused, name, tensors[0], k).clone()

    order = _optimizer_order(fused, fused_state["param_groups"], params)
    state = _map_state([fused_state["state"]], order, split)
    return {"state": state, "param_groups": copy.deepcopy(fused_state["param_groups"])}


def fuse_optimizer_states(
    states: Sequence[dict], fused: FusedNet, *, params: Sequence | None = None
) -> dict:
    """The fused optimizer's ``state_dict`` from the K members' SGD ``state_dict``s (all with
    the same param groups and settings, else ValueError), loadable into it. ``params``: the fused
    parameters in the optimizer's order (flattened over its groups), needed when there are
    several groups (a group's tensors may share a shape); by default ``fused.parameters()``."""
    if len(states) != fused.members:
        raise ValueError(f"{len(states)} optimizer states for {fused.members} members")
    groups = states[0]["param_groups"]
    for i, other in enumerate(states[1:], start=1):
        if _settings(other["param_groups"]) != _settings(groups):
            raise ValueError(f"optimizer {i}'s param groups differ from optimizer 0's")
        if other["state"].keys() != states[0]["state"].keys():
            raise ValueError(f"optimizer {i} holds state for other parameters than optimizer 0")

    def stack(name: str, tensors: list[Tensor]) -> Tensor:
        kind, shape = fused._layout[name]
        if any(t.shape != shape for t in tensors):
            raise ValueError(f"optimizer state of {name!r}: not of the member shape {tuple(shape)}")
        return torch.stack(tensors) if kind == INDEXED else torch.cat(tensors)

    order = _optimizer_order(fused, groups, params)
    state = _map_state([s["state"] for s in states], order, stack)
    return {"state": state, "param_groups": copy.deepcopy(groups)}


def _settings(groups: list[dict]) -> list[dict]:
    # Tensors (a tensor lr) as numbers, so that two optimizers' settings compare with ==.
    return [{k: v.tolist() if isinstance(v, Tensor) else v for k, v in g.items()} for g in groups]


def clip_member_grads_(params: Iterable[Tensor], members: int, max_norm: float) -> Tensor:
    """Clip each member's gradients in place as ``torch.nn.utils.clip_grad_norm_(that member's
    parameters, max_norm)`` would, and return the members' global L2 gradient norms ``(K,)``
    (before clipping). No host synchronisation, no Python loop over members.

    Member k's gradients are scaled by ``min(1, max_norm / (norm_k + 1e-6))``; NaN or inf in a
    member reaches its own gradients and norm only. Parameters without a gradient are skipped.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(members)
    blocks = [member_blocks(g, members) for g in grads]
    # A norm per tensor and member, as clip_grad_norm_ takes one per tensor: `_foreach_norm` on
    # the rows (views), a few launches on CUDA where a vector_norm(dim=1) per tensor makes P.
    rows = [row for block in blocks for row in block.unbind(0)]  # tensor-major, member-minor
    norms = torch.stack(torch._foreach_norm(rows, 2.0)).view(len(blocks), members)
    # (K, P) contiguous: each member's P norms reduced as one contiguous vector, as
    # clip_grad_norm_ reduces its stacked per-tensor norms (bitwise the same on the CPU).
    total = torch.linalg.vector_norm(norms.t().contiguous(), 2.0, dim=1)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    # Multiplied even where the coefficient is 1, as clip_grad_norm_ does: no branch, no sync.
    torch._foreach_mul_(blocks, [coef[:, None]] * len(blocks))
    return total
