"""Optimiser state_dict / load_state_dict (round trips, and to and from torch.optim) and the
learning-rate schedules (closed forms and hand-traced cases; torch.optim.lr_scheduler where
PyTorch is installed)."""
import math

import numpy as np
import pytest

from clstm.optim import SGD, Adam, CosineAnnealingLR, ReduceLROnPlateau, StepLR

SHAPES = [(3, 2), (4,)]
OPTIMISERS = [
    (SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (SGD, dict(lr=0.1, momentum=0.5, nesterov=True)),
    (SGD, dict(lr=0.2)),
    (Adam, dict(lr=0.05, weight_decay=0.1)),
    (Adam, dict(lr=0.05, betas=(0.8, 0.99), amsgrad=True)),
]


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {f"p{i}": rng.standard_normal(s) for i, s in enumerate(SHAPES)}
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    return params, grads


def run(opt, params, grad_list):
    """Steps of ``opt`` with the given gradients (``params`` is updated in place)."""
    for grads in grad_list:
        for (_, g), new in zip(opt.pairs, grads):
            g[...] = new
        opt.step()


def new_optimiser(cls, kw, params):
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    return cls([(params, grads)], **kw)


@pytest.mark.parametrize("cls, kw", OPTIMISERS)
def test_state_dict_round_trip_resumes_exactly(cls, kw):
    params, grads = make_problem()
    straight = {k: v.copy() for k, v in params.items()}
    run(new_optimiser(cls, kw, straight), straight, grads)

    trained = {k: v.copy() for k, v in params.items()}
    opt1 = new_optimiser(cls, kw, trained)
    run(opt1, trained, grads[:3])
    saved = opt1.state_dict()
    at3 = {k: v.copy() for k, v in trained.items()}
    run(opt1, trained, grads[3:4])  # the saved state is a copy: later steps leave it alone
    opt2 = new_optimiser(cls, dict(kw, lr=1.0), at3)  # hyperparameters come from the dict
    opt2.load_state_dict(saved)
    assert opt2.lr == kw["lr"]
    run(opt2, at3, grads[3:])
    for k in params:
        np.testing.assert_array_equal(at3[k], straight[k])


def test_state_dict_layout_is_torchs():
    params, grads = make_problem()
    opt = new_optimiser(Adam, dict(lr=0.1, amsgrad=True), params)
    sd = opt.state_dict()
    assert sd["state"] == {}  # no state before the first step, as torch
    assert sd["param_groups"] == [dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=0.0, amsgrad=True, params=[0, 1])]
    run(opt, params, grads[:2])
    sd = opt.state_dict()
    assert set(sd["state"]) == {0, 1}
    assert set(sd["state"][1]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] == 2.0 and sd["state"][1]["exp_avg"].shape == (4,)
    sgd = new_optimiser(SGD, dict(lr=0.1), params)
    run(sgd, params, grads[:1])
    assert sgd.state_dict()["state"] == {}  # no momentum, no buffers


def test_load_state_dict_rejects_mismatches_and_changes_nothing():
    params, grads = make_problem()
    opt = new_optimiser(Adam, dict(lr=0.1), params)
    run(opt, params, grads[:2])
    good = opt.state_dict()
    before = opt.state_dict()

    def broken(edit):
        sd = opt.state_dict()
        edit(sd)
        return sd

    cases = [
        (ValueError, "for 1 parameters", lambda sd: sd["param_groups"][0].update(params=[0])),
        (ValueError, r"state\[1\]\['exp_avg'\] must have shape \(4,\)",
         lambda sd: sd["state"][1].update(exp_avg=np.zeros(5))),
        (ValueError, "maximize=True", lambda sd: sd["param_groups"][0].update(maximize=True)),
        (KeyError, "lacks \\['eps'\\]", lambda sd: sd["param_groups"][0].pop("eps")),
        (ValueError, "Invalid lr value", lambda sd: sd["param_groups"][0].update(lr=-1.0)),
        (ValueError, "2 parameter groups",
         lambda sd: sd["param_groups"].append(sd["param_groups"][0])),
        (ValueError, "one positive integer", lambda sd: sd["state"][0].update(step=3.0)),
    ]
    for exc, match, edit in cases:
        with pytest.raises(exc, match=match):
            opt.load_state_dict(broken(edit))
        after = opt.state_dict()
        assert after["param_groups"] == before["param_groups"] and opt.t == 2
        np.testing.assert_array_equal(after["state"][1]["exp_avg"],
                                      before["state"][1]["exp_avg"])
    opt.load_state_dict(good)


# ------------------------------------------------------------------------------- torch
def torch_problem(torch, cls, kw, params):
    tparams = [torch.nn.Parameter(torch.tensor(v)) for v in params.values()]
    tcls = {SGD: torch.optim.SGD, Adam: torch.optim.Adam}[cls]
    return tparams, tcls(tparams, **kw)


def torch_run(tparams, topt, grad_list, torch):
    for grads in grad_list:
        for p, g in zip(tparams, grads):
            p.grad = torch.tensor(g)
        topt.step()


@pytest.mark.parametrize("cls, kw", OPTIMISERS)
def test_state_dict_to_and_from_torch(cls, kw):
    torch = pytest.importorskip("torch")
    params, grads = make_problem(1)
    # torch -> clstm: torch trains 3 steps, clstm resumes from its state_dict
    tparams, topt = torch_problem(torch, cls, kw, params)
    torch_run(tparams, topt, grads[:3], torch)
    ours = {k: p.detach().numpy().copy() for k, p in zip(params, tparams)}
    opt = new_optimiser(cls, kw, ours)
    opt.load_state_dict(topt.state_dict())
    torch_run(tparams, topt, grads[3:], torch)
    run(opt, ours, grads[3:])
    for k, p in zip(params, tparams):
        np.testing.assert_allclose(ours[k], p.detach().numpy(), rtol=1e-12, atol=1e-14)
    # clstm -> torch
    ours = {k: v.copy() for k, v in params.items()}
    opt = new_optimiser(cls, kw, ours)
    run(opt, ours, grads[:3])
    sd = opt.state_dict()
    sd["state"] = {i: {k: torch.as_tensor(v) for k, v in e.items()}
                   for i, e in sd["state"].items()}
    tparams, topt = torch_problem(torch, cls, kw, ours)
    topt.load_state_dict(sd)
    torch_run(tparams, topt, grads[3:], torch)
    run(opt, ours, grads[3:])
    for k, p in zip(params, tparams):
        np.testing.assert_allclose(ours[k], p.detach().numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------- schedules
def one_param_optimiser(lr=0.1):
    return new_optimiser(SGD, dict(lr=lr), {"w": np.zeros(1)})


def lrs(opt, schedule, n, metrics=None):
    out = [opt.lr]
    for e in range(n):
        schedule.step(*([metrics[e]] if metrics is not None else []))
        out.append(opt.lr)
    return out


def test_step_and_cosine_follow_the_closed_forms():
    opt = one_param_optimiser(0.8)
    got = lrs(opt, StepLR(opt, step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose(got, [0.8 * 0.5 ** (e // 3) for e in range(11)], rtol=1e-15)
    opt = one_param_optimiser(0.5)
    schedule = CosineAnnealingLR(opt, T_max=4, eta_min=0.1)
    got = lrs(opt, schedule, 20)
    closed = [0.1 + 0.4 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(21)]
    np.testing.assert_allclose(got, closed, rtol=1e-12)  # down, up again after T_max
    assert schedule.get_last_lr() == [got[-1]]


def test_reduce_on_plateau_hand_traced():
    opt = one_param_optimiser(1.0)
    schedule = ReduceLROnPlateau(opt, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    # epoch: 1 best; 2 bad (1 <= patience); 3 bad (2 > 1: halve, cooldown 1);
    # 4 bad but in cooldown (not counted); 5 bad (1); 6 bad (2: halve); 7 better;
    # 8, 9 bad: halve to max(0.125, 0.2) = 0.2; 10, 11, 12 bad: 0.2 stays (min_lr)
    metrics = [1.0, 1.0, 2.0, 3.0, 1.0, 1.5, 0.5, 0.5, 0.6, 0.9, 0.9, 0.9]
    got = lrs(opt, schedule, len(metrics), metrics)
    assert got == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
    opt = one_param_optimiser(1.0)
    up = ReduceLROnPlateau(opt, mode="max", patience=0, threshold=0.1, threshold_mode="abs")
    # 0.5 best; 0.55 is not above 0.5 + 0.1: bad, > patience 0: reduce
    assert lrs(opt, up, 3, [0.5, 0.55, 0.7]) == [1.0, 1.0, 0.1, 0.1]


def test_schedule_state_dict_round_trip_and_validation():
    opt = one_param_optimiser(0.5)
    schedule = CosineAnnealingLR(opt, T_max=5)
    lrs(opt, schedule, 3)
    sd = schedule.state_dict()
    assert sd == {"last_epoch": 3, "base_lrs": [0.5], "T_max": 5, "eta_min": 0.0}
    rest = lrs(opt, schedule, 4)
    opt2 = one_param_optimiser(rest[0])
    resumed = CosineAnnealingLR(opt2, T_max=1)
    resumed.load_state_dict(sd)
    assert lrs(opt2, resumed, 4) == rest
    with pytest.raises(KeyError, match="missing"):
        resumed.load_state_dict({"last_epoch": 1})
    with pytest.raises(ValueError, match="step_size must be an int >= 1"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max must be an int >= 1"):
        CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        ReduceLROnPlateau(opt, mode="up")
    with pytest.raises(ValueError, match="Invalid factor value"):
        ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(TypeError, match="optimizer must be a clstm optimiser"):
        StepLR(object(), 2)


SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.3), None),
    ("CosineAnnealingLR", dict(T_max=4, eta_min=0.01), None),
    ("CosineAnnealingLR", dict(T_max=1), None),
    ("ReduceLROnPlateau", dict(factor=0.5, patience=2, cooldown=1, min_lr=0.01),
     [5, 4, 4.5, 4.2, 4.1, 3.0, 3.5, 3.4, 3.6, 3.7, 3.9, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9]),
    ("ReduceLROnPlateau", dict(mode="max", patience=0, threshold=0.05, threshold_mode="abs"),
     [0.1, 0.2, 0.22, 0.3, 0.31, 0.5, 0.4, 0.6, 0.6, 0.62, 0.7, 0.71, 0.9, 0.9, 0.8, 1, 1]),
]


@pytest.mark.parametrize("name, kw, metrics", SCHEDULES)
def test_schedules_match_torch(name, kw, metrics):
    torch = pytest.importorskip("torch")
    import clstm.optim as ours_module
    n = 17
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=0.5)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    expected = [topt.param_groups[0]["lr"]]
    for e in range(n):
        p.grad = torch.zeros(1)
        topt.step()
        tsched.step(*([metrics[e]] if metrics else []))
        expected.append(topt.param_groups[0]["lr"])
        if e == 6:
            torch_state = tsched.state_dict()
    opt = one_param_optimiser(0.5)
    schedule = getattr(ours_module, name)(opt, **kw)
    got = lrs(opt, schedule, n, metrics)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    # torch's state_dict resumes the schedule here
    opt2 = one_param_optimiser(expected[7])
    resumed = getattr(ours_module, name)(opt2, **kw)
    resumed.load_state_dict(torch_state)
    np.testing.assert_allclose(lrs(opt2, resumed, n - 7, metrics[7:] if metrics else None),
                               expected[7:], rtol=1e-13)
