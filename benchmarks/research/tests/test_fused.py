"""Horizontal fusion: K runs in one grouped network compute what the K runs compute alone."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from research.fused import (
    clip_member_grads_,
    fuse,
    fuse_optimizer_states,
    load_member_state_dict,
    member_blocks,
    member_cross_entropy,
    member_optimizer_state,
    member_state_dict,
    stack_inputs,
)
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from plainnet.models import build_model
from plainnet.recipe import param_groups

K = 3
SMALL = ["plain16-16|32", "resnet20"]  # the two families, small enough for a few seconds
CL = torch.channels_last
TOL = {"rtol": 1e-5, "atol": 1e-5}


def members(name: str, k: int = K, *, channels_last: bool = False) -> list[nn.Module]:
    """K independently initialised models (seeds 0..k-1), each in its own train mode."""
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = build_model(name, 10)
        out.append(model.to(memory_format=CL) if channels_last else model)
    return out


def batches(k: int = K, b: int = 8, size: int = 16, seed: int = 100) -> tuple:
    """Each member's own batch: images (K, B, 3, size, size), labels (K, B)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, b, 3, size, size, generator=g), torch.randint(0, 10, (k, b), generator=g)


def fused_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return stack_inputs(images, memory_format=CL if channels_last else torch.contiguous_format)


def alone(image: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return image.contiguous(memory_format=CL) if channels_last else image


def warm_up_statistics(models: list[nn.Module]) -> None:
    """Give every member its own BatchNorm running statistics (two train-mode batches)."""
    with torch.no_grad():
        for seed in (1, 2):
            for model, x in zip(models, batches(len(models), seed=seed)[0], strict=True):
                model.train()(x)


def sgd(model: nn.Module) -> torch.optim.SGD:
    """plainnet's optimizer: decay 1e-3 on decayed_parameters(), 0 on the rest; a tensor lr."""
    return torch.optim.SGD(
        param_groups(model, 1e-3), lr=torch.tensor(0.05), momentum=0.9, fused=True
    )


def assert_members_equal(fused_tensor, tensors, **tol):
    """Row k of member_blocks(fused_tensor) against tensors[k] in the same memory order."""
    rows = member_blocks(fused_tensor, len(tensors))
    for k, t in enumerate(tensors):
        torch.testing.assert_close(rows[k], member_blocks(t, 1)[0], **tol)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("name", SMALL)
def test_forward_equals_each_members_own_forward(name, train, channels_last):
    models = members(name, channels_last=channels_last)
    warm_up_statistics(models)
    fused = fuse(models)
    images, _ = batches()
    with torch.no_grad():
        want = torch.stack(
            [m.train(train)(alone(x, channels_last)) for m, x in zip(models, images, strict=True)],
            dim=1,
        )
        got = fused.train(train)(fused_input(images, channels_last))
    assert got.shape == (8, K, 10)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", ["plain11", "resnet110"])
def test_paper_models_forward(name):
    models = members(name, 2)
    fused = fuse(models).eval()
    images, _ = batches(2, b=4, size=32)
    with torch.no_grad():
        want = torch.stack([m.eval()(x) for m, x in zip(models, images, strict=True)], dim=1)
        torch.testing.assert_close(fused(stack_inputs(images)), want, **TOL)


def test_stack_inputs_layout():
    images, _ = batches(K, b=2, size=4)
    x = stack_inputs(images)
    y = stack_inputs(images, memory_format=CL)
    assert x.shape == y.shape == (2, 3 * K, 4, 4)
    assert x.is_contiguous() and y.is_contiguous(memory_format=CL)
    for k in range(K):
        assert torch.equal(x[:, 3 * k : 3 * k + 3], images[k])
    assert torch.equal(x, y)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", SMALL)
def test_gradients_and_running_statistics_per_member(name, channels_last):
    models = members(name, channels_last=channels_last)
    fused = fuse(models)
    images, labels = batches()
    member_cross_entropy(fused(fused_input(images, channels_last)), labels).sum().backward()
    for m, x, y in zip(models, images, labels, strict=True):
        F.cross_entropy(m(alone(x, channels_last)), y).backward()
    per_member = [dict(m.named_parameters()) for m in models]
    for pname, p in fused.named_parameters():
        assert p.grad is not None and p.grad.stride() == p.stride(), pname  # layout kept
        assert_members_equal(p.grad, [d[pname].grad for d in per_member], **TOL)
    for k, m in enumerate(models):
        state = member_state_dict(fused, k)
        for bname, buf in m.named_buffers():
            torch.testing.assert_close(state[bname], buf, **TOL)


def train_together(models, images, labels, max_norm):
    """One fused SGD step per batch: member_cross_entropy summed, clip_member_grads_, fused SGD;
    images (steps, K, B, ...), labels (steps, K, B). Returns the fused net, its optimizer and
    the clipping norms (steps, K)."""
    fused = fuse(models)
    opt = sgd(fused)
    norms = []
    for x, y in zip(images, labels, strict=True):
        loss = member_cross_entropy(fused(stack_inputs(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        norms.append(clip_member_grads_(fused.parameters(), len(models), max_norm))
        opt.step()
    return fused, opt, torch.stack(norms)


def train_alone(model, images, labels, max_norm, opt=None):
    """The same steps for one run (images (steps, B, ...)): F.cross_entropy,
    clip_grad_norm_(foreach), fused SGD. Returns the optimizer and the norms (steps,)."""
    opt = opt or sgd(model)
    norms = []
    for x, y in zip(images, labels, strict=True):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True))
        opt.step()
    return opt, torch.stack(norms)


@pytest.mark.parametrize("name", SMALL)
def test_training_together_equals_training_alone(name):
    """20 steps in float64, where the fused and the single runs agree to about 1e-14.

    Not float32: there the per-step difference is a few ulps (oneDNN's grouped kernels sum in
    another order), but once such a difference moves a ReLU input across zero, that element's
    whole contribution enters or leaves a gradient (up to 1e-2 here), and training on random
    data amplifies it: after 20 steps most seeds tried differ by more than 1e-4, as much as a
    single run differs from itself in channels-last. float64 leaves no such flips, so this checks that
    the fused step computes what the single steps compute, the forward and gradient tests above
    check the float32 kernels."""
    steps, max_norm = 20, 10.0
    models = [m.double() for m in members(name)]
    data = [batches(b=8, size=8, seed=400 + s) for s in range(steps)]
    images = torch.stack([d[0] for d in data]).double()  # (steps, K, B, 3, 8, 8)
    labels = torch.stack([d[1] for d in data])
    fused, _, norms = train_together(copy.deepcopy(models), images, labels, max_norm)
    # Each member's own clipping coefficient, below and above the threshold.
    assert (norms > max_norm).any() and (norms < max_norm).any()
    for k, model in enumerate(models):
        _, alone_norms = train_alone(model, images[:, k], labels[:, k], max_norm)
        torch.testing.assert_close(norms[:, k], alone_norms, rtol=1e-12, atol=0)
        state = member_state_dict(fused, k)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("name", SMALL)
def test_nan_member_leaves_the_others_exactly_alone(name):
    models = members(name)
    poisoned = copy.deepcopy(models)
    with torch.no_grad():
        for p in poisoned[1].parameters():
            p.fill_(float("nan"))
    images, labels = batches()
    results = []
    for group in (models, poisoned):
        fused = fuse(group)
        opt = sgd(fused)
        logits = fused(stack_inputs(images))
        member_cross_entropy(logits, labels).sum().backward()
        grads = [p.grad.clone() for p in fused.parameters()]
        norms = clip_member_grads_(fused.parameters(), K, 1.0)
        opt.step()
        results.append((fused, logits.detach(), grads, norms))
    (finite, logits, grads, norms), (nan, nan_logits, nan_grads, nan_norms) = results
    keep = [0, 2]
    assert torch.equal(nan_logits[:, keep], logits[:, keep]) and nan_logits[:, 1].isnan().all()
    assert torch.equal(nan_norms[keep], norms[keep]) and nan_norms[1].isnan()
    for g, ng in zip(grads, nan_grads, strict=True):
        assert torch.equal(member_blocks(ng, K)[keep], member_blocks(g, K)[keep])
    for (key, t), nt in zip(finite.state_dict().items(), nan.state_dict().values(), strict=True):
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(member_blocks(nt, K)[keep], member_blocks(t, K)[keep]), key


class SyncError(RuntimeError):
    pass


class NoHostSync(TorchDispatchMode):
    """Raises on the ops that read a device value on the host."""

    BANNED: ClassVar = {
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.is_nonzero.default,
    }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.BANNED or func.overloadpacket is torch.ops.aten.nonzero:
            raise SyncError(str(func))
        return func(*args, **(kwargs or {}))


def test_the_no_sync_check_catches_syncs():
    with NoHostSync(), pytest.raises(SyncError):
        torch.ones(2).sum().item()
    with NoHostSync(), pytest.raises(SyncError):
        torch.ones(2).nonzero()


@pytest.mark.parametrize("channels_last", [False, True])
def test_clip_member_grads_is_clip_grad_norm_per_member(channels_last):
    models = members("plain16-16|32", channels_last=channels_last)
    g = torch.Generator().manual_seed(3)
    for k, m in enumerate(models):  # member 1 below the threshold, 0 and 2 above
        for p in m.parameters():
            # empty_like: the parameter's own memory format, as autograd makes gradients
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g))
            p.grad.mul_([1.0, 0.01, 5.0][k])
    fused = fuse(models)
    for fp, *ps in zip(fused.parameters(), *(m.parameters() for m in models), strict=True):
        fp.grad = torch.empty_like(fp)
        member_blocks(fp.grad, K).copy_(torch.cat([member_blocks(p.grad, 1) for p in ps]))
    with NoHostSync():
        norms = clip_member_grads_(fused.parameters(), K, 10.0)
    want = torch.stack(
        [nn.utils.clip_grad_norm_(m.parameters(), 10.0, foreach=True) for m in models]
    )
    assert (want > 10).tolist() == [True, False, True]
    # Bitwise: the same per-tensor norms (one per member block), reduced in the same order.
    assert torch.equal(norms, want)
    for fp, *ps in zip(fused.parameters(), *(m.parameters() for m in models), strict=True):
        assert_members_equal(fp.grad, [p.grad for p in ps], rtol=0, atol=0)


def test_state_dict_round_trip():
    models = members("resnet20")
    warm_up_statistics(models)
    fused = fuse(models)
    reference = build_model("resnet20", 10).state_dict()
    for k, m in enumerate(models):
        state = member_state_dict(fused, k)
        assert list(state) == list(reference)
        assert all(state[key].shape == reference[key].shape for key in state)
        assert all(torch.equal(state[key], value) for key, value in m.state_dict().items())
    # Member 2 of another fused net from member 0's state: member 2 changes, 0 and 1 do not.
    other = fuse(members("resnet20"))
    before = [member_state_dict(other, k) for k in range(K)]
    load_member_state_dict(other, 2, member_state_dict(fused, 0))
    after = [member_state_dict(other, k) for k in range(K)]
    for key, value in member_state_dict(fused, 0).items():
        assert torch.equal(after[2][key], value), key
        for k in (0, 1):
            if not key.endswith("num_batches_tracked"):  # the one counter all members share
                assert torch.equal(after[k][key], before[k][key]), key


def test_load_member_state_dict_checks_keys_and_shapes():
    fused = fuse(members("plain16-16|32"))
    state = member_state_dict(fused, 0)
    missing = {k: v for k, v in state.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match=r"missing: \['classifier\.bias'\], unexpected: \[\]"):
        load_member_state_dict(fused, 1, missing)
    with pytest.raises(ValueError, match=r"unexpected: \['extra'\]"):
        load_member_state_dict(fused, 1, {**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'fc\.linear\.weight': shape"):
        load_member_state_dict(fused, 1, {**state, "fc.linear.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="member 3 out of range"):
        member_state_dict(fused, 3)


@pytest.mark.parametrize("name", SMALL)
def test_optimizer_state_round_trip(name):
    models = [m.double() for m in members(name)]
    data = [batches(b=4, size=8, seed=300 + s) for s in range(4)]
    images = torch.stack([d[0] for d in data]).double()
    labels = torch.stack([d[1] for d in data])
    opts = [train_alone(m, images[:3, k], labels[:3, k], 10.0)[0] for k, m in enumerate(models)]
    states = [opt.state_dict() for opt in opts]
    fused = fuse(models)
    opt = sgd(fused)
    order = [p for group in opt.param_groups for p in group["params"]]
    opt.load_state_dict(fuse_optimizer_states(states, fused, params=order))
    fused_state = opt.state_dict()
    for k, state in enumerate(states):
        back = member_optimizer_state(fused_state, fused, k, params=order)
        assert back["param_groups"] == state["param_groups"]
        assert back["state"].keys() == state["state"].keys()
        for index, entry in state["state"].items():
            assert torch.equal(back["state"][index]["momentum_buffer"], entry["momentum_buffer"])
    # The fused optimizer carries on where the K optimizers stopped: one more step each.
    train_together_from(fused, opt, images[3], labels[3])
    for k, (m, single) in enumerate(zip(models, opts, strict=True)):
        train_alone(m, images[3:, k], labels[3:, k], 10.0, single)
        for key, value in member_state_dict(fused, k).items():
            torch.testing.assert_close(value, m.state_dict()[key], rtol=1e-10, atol=1e-12)


def train_together_from(fused, opt, images, labels):
    loss = member_cross_entropy(fused(stack_inputs(images)), labels)
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    clip_member_grads_(fused.parameters(), fused.members, 10.0)
    opt.step()


def test_optimizer_state_checks():
    models = members("plain16-16|32", 2)
    states = []
    for m in models:
        opt = sgd(m)
        F.cross_entropy(m(batches(1)[0][0]), batches(1)[1][0]).backward()
        opt.step()
        states.append(opt.state_dict())
    fused = fuse(models)
    with pytest.raises(ValueError, match="1 optimizer states for 2 members"):
        fuse_optimizer_states(states[:1], fused)
    states[1]["param_groups"][0]["weight_decay"] = 0.5
    with pytest.raises(ValueError, match="param groups differ"):
        fuse_optimizer_states(states, fused)
    one_group = torch.optim.SGD(fused.parameters(), lr=0.1).state_dict()
    one_group["param_groups"][0]["params"].pop()
    with pytest.raises(ValueError, match="pass params="):
        member_optimizer_state(one_group, fused, 0)


def test_names_order_and_decayed_parameters():
    for name in SMALL:
        models = members(name, 2)
        fused = fuse(models)
        assert fused.members == 2
        assert [n for n, _ in fused.named_parameters()] == [
            n for n, _ in models[0].named_parameters()
        ]
        assert [n for n, _ in fused.named_buffers()] == [n for n, _ in models[0].named_buffers()]
        names = {id(p): n for n, p in fused.named_parameters()}
        member_names = {id(p): n for n, p in models[0].named_parameters()}
        assert [names[id(p)] for p in fused.decayed_parameters()] == [
            member_names[id(p)] for p in models[0].decayed_parameters()
        ]
        sizes = [len(g["params"]) for g in param_groups(fused, 1e-3)]
        assert sizes == [len(g["params"]) for g in param_groups(models[0], 1e-3)]


def test_fuse_leaves_the_members_and_the_global_rng_alone():
    models = members("plain16-16|32")
    before = [copy.deepcopy(m.state_dict()) for m in models]
    rng = torch.get_rng_state()
    fuse(models)
    assert torch.equal(rng, torch.get_rng_state())
    for m, state in zip(models, before, strict=True):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_fuse_refuses_mismatched_members_and_unknown_modules():
    with pytest.raises(ValueError, match="at least one"):
        fuse([])
    with pytest.raises(ValueError, match=r"model 1 differs from model 0: .*CifarResNet"):
        fuse([build_model("plain16-16|32", 10), build_model("resnet20", 10)])
    with pytest.raises(ValueError, match="model 1 differs"):
        fuse([build_model("plain16-16|32", 10), build_model("plain16-16|32", 100)])
    with pytest.raises(ValueError, match=r"'1' \(LayerNorm\)"):
        fuse([nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4))] * 2)
    with pytest.raises(ValueError, match=r"'0.1' \(Softmax\)"):  # no parameters, mixes channels
        fuse([nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Softmax(1)))] * 2)
