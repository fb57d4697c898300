"""Golden fixtures for qfake's optimizers and learning-rate schedulers, produced with PyTorch's own
torch.optim classes on CPU (single-tensor path: CPU is not a foreach device).

    ~/.torch-ref/bin/python tools/golden/gen_optim.py

Writes crates/qfake/tests/fixtures/optim.safetensors. Five parameters of odd sizes (1, 7, 33, 257 and
a [16, 3, 3, 3] conv weight, so ATen's 32-float AVX-512 loop body and its scalar tail both run) start
from shared seeded values; every step k (0-based) draws fresh seeded gradients "g{k}/<param>"
(shared by all cases), and on some steps one parameter gets none (SKIP). After step k a case
records "p{k}/<param>" and its state "s{k}/<param>.<momentum_buffer|exp_avg|exp_avg_sq|
max_exp_avg_sq|step>", for every parameter after the steps in FULL and for the small ones after
every step (the fixture stays small). Case "sched_*" records the learning rates "lrs" (f64) that
StepLR / MultiStepLR / ExponentialLR / CosineAnnealingLR / LinearLR / OneCycleLR's step() gives
over 30 epochs, from epoch 0, on SGD(momentum=0.9); OneCycleLR cases also record SGD's momentum
"momenta" (f64), which it cycles, and every case PyTorch's state_dict after STATE_AT steps.
"""

import torch
from fixtures import Fixture

torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"

STEPS = 10
PARAMS = {"a.bias": [1], "b.weight": [7], "c.weight": [33], "d.weight": [257], "features.0.weight": [16, 3, 3, 3]}
SMALL = {"a.bias", "b.weight", "c.weight"}
SKIP = {0: "d.weight", 3: "b.weight", 6: "features.0.weight", 7: "a.bias"}
FULL = {1, 9}

CONFIGS = {
    "sgd_plain": (torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_nesterov_wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    "sgd_dampening": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1)),
    "sgd_maximize": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3, maximize=True)),
    "adam_default": (torch.optim.Adam, dict(lr=1e-3)),
    "adam_wd_amsgrad": (torch.optim.Adam, dict(lr=1e-3, weight_decay=1e-4, amsgrad=True)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3)),
    # beta1 < 0.5: exp_avg.lerp_ takes ATen's large-weight branch.
    "adam_betas_maximize": (torch.optim.Adam, dict(lr=2e-3, betas=(0.3, 0.99), eps=1e-6, maximize=True)),
}

SCHEDULERS = {
    "sched_step": (torch.optim.lr_scheduler.StepLR, dict(step_size=7, gamma=0.1), 0.1),
    "sched_step_gamma3": (torch.optim.lr_scheduler.StepLR, dict(step_size=3, gamma=0.3), 0.05),
    "sched_cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=10), 0.1),
    "sched_cosine_eta_min": (torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=12, eta_min=1e-4), 0.01),
    # T_max < 30: the schedule passes its minimum and climbs back (the restart branch).
    "sched_cosine_restart": (torch.optim.lr_scheduler.CosineAnnealingLR, dict(T_max=7, eta_min=0.002), 0.03),
    "sched_multistep": (torch.optim.lr_scheduler.MultiStepLR, dict(milestones=[3, 8, 8, 20], gamma=0.5), 0.1),
    "sched_exponential": (torch.optim.lr_scheduler.ExponentialLR, dict(gamma=0.93), 0.07),
    "sched_linear": (torch.optim.lr_scheduler.LinearLR, dict(start_factor=0.25, end_factor=1.0, total_iters=9), 0.1),
    "sched_linear_decay": (torch.optim.lr_scheduler.LinearLR, dict(start_factor=1.0, end_factor=0.1, total_iters=25), 0.3),
    "sched_onecycle": (torch.optim.lr_scheduler.OneCycleLR, dict(max_lr=0.2, total_steps=30), 0.1),
    "sched_onecycle_linear_3phase": (
        torch.optim.lr_scheduler.OneCycleLR,
        dict(max_lr=0.05, total_steps=30, pct_start=0.25, anneal_strategy="linear", three_phase=True, div_factor=10.0),
        0.1,
    ),
}
# After this many steps each scheduler case records PyTorch's state_dict entries "last_epoch",
# "_step_count", "_last_lr" and "base_lrs" (case parameter "state").
STATE_AT = 12


def initial_params():
    gen = torch.Generator().manual_seed(7)
    return {name: torch.randn(shape, generator=gen) for name, shape in PARAMS.items()}


def gradients():
    gen = torch.Generator().manual_seed(11)
    steps = []
    for k in range(STEPS):
        grads = {}
        for name, shape in PARAMS.items():
            g = torch.randn(shape, generator=gen) * (0.5 if k % 2 else 0.05)
            g.view(-1)[::5] = g.view(-1)[::5] * 1e-3  # small values next to large ones
            if name != SKIP.get(k):
                grads[name] = g
        steps.append(grads)
    return steps


def main():
    fx = Fixture("qfake", "optim")
    init, steps = initial_params(), gradients()
    fx.case("inputs", {"steps": STEPS}, **{f"init/{n}": t for n, t in init.items()},
            **{f"g{k}/{n}": g for k, grads in enumerate(steps) for n, g in grads.items()})
    for case, (cls, kwargs) in CONFIGS.items():
        params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
        opt = cls(list(params.values()), **kwargs)
        names = {id(p): n for n, p in params.items()}
        tensors = {}
        for k, grads in enumerate(steps):
            for n, p in params.items():
                p.grad = grads[n].clone() if n in grads else None
            opt.step()
            for n, p in params.items():
                if k not in FULL and n not in SMALL:
                    continue
                # clone: detach() shares the live storage, which later steps overwrite
                tensors[f"p{k}/{n}"] = p.detach().clone()
                for key, value in opt.state[p].items():
                    tensors[f"s{k}/{names[id(p)]}.{key}"] = (value.reshape(-1) if key == "step" else value).clone()
        params_json = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        fx.case(case, {"optimizer": cls.__name__, **params_json}, **tensors)
    for case, (cls, kwargs, lr) in SCHEDULERS.items():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
        sched = cls(opt, **kwargs)
        lrs, momenta, state = [], [], None
        for k in range(30):
            if k == STATE_AT:
                sd = sched.state_dict()
                state = {key: sd[key] for key in ("last_epoch", "_step_count", "_last_lr", "base_lrs")}
            lrs.append(opt.param_groups[0]["lr"])
            momenta.append(opt.param_groups[0]["momentum"])
            opt.step()
            sched.step()
        extra = {"momenta": torch.tensor(momenta, dtype=torch.float64)} if cls.__name__ == "OneCycleLR" else {}
        fx.case(
            case,
            {"scheduler": cls.__name__, "lr": lr, "state": state, **kwargs},
            lrs=torch.tensor(lrs, dtype=torch.float64),
            **extra,
        )
    fx.save()


if __name__ == "__main__":
    main()
