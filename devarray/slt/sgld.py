"""SGLD over stacked chains (paper appendix A.2, eqs. 5–8; A.4.1–A.4.3).

One SGLD step of chain c at parameters w_τ, with minibatch loss ℓ_m^{(τ)} (eq. 8 in the
standard form of Lau et al. and devinterp — the paper's printed eq. 8 drops the minus sign
and puts an extra ½ on γ):

    Δw_τ = −(ε/2) (nβ ∇ℓ_m^{(τ)}(w_τ) + γ (w_τ − w*)) + N(0, ε)
         = −β̃ ∇ℓ_m^{(τ)}(w_τ) − γ̃ (w_τ − w*) + N(0, ε),   β̃ = ε nβ / 2,  γ̃ = ε γ / 2   (A.4.3)

with w_1 = w* (eqs. 6–7). The chain records ℓ_m^{(τ)}(w_τ), the loss it already computed for
the gradient, so the estimator can recycle it (A.2).

Chains advance together. All chains' parameters live in one (C, P) tensor of flattened
parameters; the gradient of every chain comes either from one ``torch.func.vmap`` call over
the chain dimension ("batched") or from a loop over chains ("loop"; on a multi-core CPU the
chains of a step run side by side, one single-threaded chain per thread). Everything else —
minibatch indices, noise, the update itself — is shared code, so the two paths differ only in
the rounding of the gradient.

Seeding (A.4.2): chain c draws its minibatches and its noise from two generators derived from
(seed, c) alone, so every checkpoint sees the same batches and the same noise, a rerun is
bitwise identical, and the draws do not depend on the path or on the number of chains.

Restrictions (the weight-refined LLC, :mod:`devarray.slt.restrictions`): a chain may move only
the coordinates of a subset V, the rest frozen at w*. Several restrictions run together as one
stack of R × C chains (row r·C + c is chain c of restriction r) through the same batched or loop
gradient; chain c of every restriction uses chain c's batches and noise, and the noise is drawn
over all trainable parameters and read at V's coordinates, so a restriction's numbers do not
depend on which others it runs with (bitwise on the loop path). A setting may also *stack* its
restrictions (``stack=``, e.g. the language model's heads, :meth:`devarray.settings.Setting.
restriction_stack`): then the "shared" path computes chain c's rows of every restriction in one
call on their common minibatch, the part of the network no restriction moves done once.

Samplers: ``"sgld"`` is the update above. ``"rmsprop_sgld"`` is the RMSProp-preconditioned SGLD
of Li et al. (2016, "Preconditioned stochastic gradient Langevin dynamics for deep neural
networks", AAAI), in devinterp's form (``SGMCMC.rmsprop_sgld``): with the running mean square
v_τ = α v_{τ−1} + (1 − α) (∇ℓ_m)² of the minibatch gradient (v_0 = 0, updated before use) and
the diagonal G_τ = 1 / (√v_τ + δ),

    Δw_τ = −G_τ (β̃ ∇ℓ_m^{(τ)}(w_τ) + γ̃ (w_τ − w*)) + √(ε G_τ) N(0, 1)

(α = ``rmsprop_alpha``, default 0.99; δ = ``rmsprop_eps``, default 0.1, both devinterp's). Like
devinterp it drops Li et al.'s Γ correction term (small when G changes slowly). It rescales each
coordinate's step by its gradient scale, so steep directions no longer bound ε for all others.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from ..seeding import derive_seed
from .flat import FlatLoss, LossFn
from .restrictions import Restriction

METHODS = ("auto", "batched", "loop", "shared")

StackFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``(w_rows, *batch) -> (grads, losses)``: R restrictions' rows (R, P) of a flat on one shared
batch, with their gradients (R, P) (zero off each row's coordinates) and losses (R,)."""
StackFactory = Callable[[nn.Module, FlatLoss, Sequence[Restriction]], StackFn | None]
"""``(model, flat, restrictions) -> StackFn``, or None when it cannot stack these restrictions."""
SAMPLERS = ("sgld", "rmsprop_sgld")


@dataclass(frozen=True)
class SGLDSettings:
    """Sampler settings in the (ε, nβ, γ) parametrisation; β̃ and γ̃ are derived (A.4.3).

    ``num_draws`` counts the kept draws; each chain takes ``num_burnin_steps + num_draws``
    steps (the paper's T_SGLD), the first ``num_burnin_steps`` of them discarded. ``sampler`` is
    one of :data:`SAMPLERS`; the ``rmsprop_*`` settings serve ``"rmsprop_sgld"`` only.
    """

    epsilon: float
    nbeta: float
    localization: float
    batch_size: int
    num_chains: int
    num_draws: int
    num_burnin_steps: int = 0
    sampler: str = "sgld"
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1

    @property
    def beta_tilde(self) -> float:
        return self.epsilon * self.nbeta / 2

    @property
    def gamma_tilde(self) -> float:
        return self.epsilon * self.localization / 2

    @property
    def num_steps(self) -> int:
        return self.num_burnin_steps + self.num_draws

    def to_dict(self) -> dict:
        """The settings as recorded with results. Plain SGLD records no sampler keys, so results
        made before there was a choice of sampler keep their settings fingerprint."""
        d = asdict(self) | {"beta_tilde": self.beta_tilde, "gamma_tilde": self.gamma_tilde}
        if self.sampler == "sgld":
            for k in ("sampler", "rmsprop_alpha", "rmsprop_eps"):
                d.pop(k)
        return d


def default_nbeta(batch_size: int) -> float:
    """nβ = m / log m for SGLD batch size m (A.4.1)."""
    if batch_size < 2:
        raise ValueError(f"the default nβ = m/log m is undefined for batch_size={batch_size}; pass nbeta")
    return batch_size / math.log(batch_size)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _one_of(names: str, **given: float | None) -> float | None:
    """The value given under any of several synonyms, refusing two different values."""
    values = {k: v for k, v in given.items() if v is not None}
    distinct = set(values.values())
    if len(distinct) > 1 and not all(_same(v, next(iter(distinct))) for v in distinct):
        raise ValueError(f"contradictory {names}: {values}; give one of them")
    return next(iter(values.values()), None)


def sgld_settings(
    *,
    batch_size: int,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin_steps: int = 0,
    epsilon: float | None = None,
    lr: float | None = None,
    nbeta: float | None = None,
    beta_tilde: float | None = None,
    localization: float | None = None,
    gamma: float | None = None,
    gamma_tilde: float | None = None,
    sampler: str = "sgld",
    rmsprop_alpha: float = 0.99,
    rmsprop_eps: float = 0.1,
) -> SGLDSettings:
    """Resolve either parametrisation into :class:`SGLDSettings`.

    Accepts (ε, nβ, γ) — also under devinterp's names ``lr`` and ``localization`` — or
    (ε, β̃, γ̃), or any mix from which each of ε, nβ, γ follows through β̃ = ε nβ/2 and
    γ̃ = ε γ/2. Values that are given twice must agree. nβ defaults to m/log m (A.4.1).
    ``sampler`` is "sgld" or "rmsprop_sgld" (with ``rmsprop_alpha`` in [0, 1), ``rmsprop_eps`` > 0).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not (math.isfinite(rmsprop_alpha) and 0 <= rmsprop_alpha < 1):
        raise ValueError(f"rmsprop_alpha must be in [0, 1), got {rmsprop_alpha}")
    if not (math.isfinite(rmsprop_eps) and rmsprop_eps > 0):
        raise ValueError(f"rmsprop_eps must be a positive finite number, got {rmsprop_eps}")
    eps = _one_of("step sizes (epsilon, lr)", epsilon=epsilon, lr=lr)
    gam = _one_of("localizations (gamma, localization)", gamma=gamma, localization=localization)
    for name, value in dict(
        epsilon=eps, nbeta=nbeta, beta_tilde=beta_tilde, localization=gam, gamma_tilde=gamma_tilde
    ).items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value}")

    # ε may follow from either pair; both pairs must then agree on it.
    implied = {}
    if nbeta is not None and beta_tilde is not None and nbeta > 0:
        implied["2·beta_tilde/nbeta"] = 2 * beta_tilde / nbeta
    if gam is not None and gamma_tilde is not None and gam > 0:
        implied["2·gamma_tilde/gamma"] = 2 * gamma_tilde / gam
    eps = _one_of("step sizes", epsilon=eps, **implied)
    if eps is None or eps <= 0:
        raise ValueError("give a positive SGLD step size: epsilon (devinterp's lr), or nbeta with beta_tilde")

    if beta_tilde is not None:
        nbeta = _one_of("inverse temperatures", nbeta=nbeta, **{"2·beta_tilde/epsilon": 2 * beta_tilde / eps})
    if nbeta is None:
        nbeta = default_nbeta(batch_size)
    if nbeta <= 0:
        raise ValueError(f"nbeta must be positive, got {nbeta}")
    if gamma_tilde is not None:
        gam = _one_of("localizations", gamma=gam, **{"2·gamma_tilde/epsilon": 2 * gamma_tilde / eps})
    if gam is None:
        raise ValueError("give a localization strength: localization (γ, also 'gamma') or gamma_tilde (γ̃ = εγ/2)")

    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("num_chains", num_chains, 1),
        ("num_draws", num_draws, 1),
        ("num_burnin_steps", num_burnin_steps, 0),
    ):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return SGLDSettings(
        float(eps),
        float(nbeta),
        float(gam),
        int(batch_size),
        int(num_chains),
        int(num_draws),
        int(num_burnin_steps),
        sampler,
        float(rmsprop_alpha),
        float(rmsprop_eps),
    )


def check_dataset(dataset: Sequence[torch.Tensor], batch_size: int) -> int:
    """Rows n of a dataset given as a tuple of tensors sharing their first dimension."""
    if isinstance(dataset, torch.Tensor) or not len(dataset):
        raise ValueError("dataset must be a non-empty tuple of tensors sharing their first dimension, e.g. (tokens, y)")
    sizes = {int(x.shape[0]) for x in dataset}
    if len(sizes) != 1:
        raise ValueError(f"dataset tensors must share their first dimension, got lengths {sorted(sizes)}")
    n = sizes.pop()
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the dataset's {n} rows; use a smaller batch or more data")
    return n


class _BatchStream:
    """Minibatch row indices of one chain: epochs of a seeded permutation (no repeats within an
    epoch). With m = n every step takes the whole dataset in order (full-batch SGLD)."""

    def __init__(self, n: int, m: int, gen: torch.Generator):
        self.n, self.m, self.gen = n, m, gen
        self.perm, self.pos = torch.arange(n), n  # pos = n: the first call starts an epoch

    def next(self) -> torch.Tensor:
        if self.m == self.n:
            return self.perm
        if self.pos + self.m > self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.m]
        self.pos += self.m
        return idx


@dataclass
class ChainSamples:
    """Raw output of :func:`run_chains`: every step's minibatch loss, burn-in included. With R
    restrictions the rows are R blocks of C chains (row r·C + c)."""

    loss: torch.Tensor  # (R·C, num_steps) float64, NaN after a chain diverged
    diverged_step: torch.Tensor  # (R·C,) int64, first step with a non-finite or exploding loss, -1 if none
    method: str
    num_params: int
    seconds: float
    num_params_per_restriction: tuple[int, ...] = ()


def chain_generators(seed: int, chain: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The (minibatch, noise) generators of one chain, derived from (seed, chain) only (A.4.2)."""
    batches = torch.Generator().manual_seed(derive_seed(seed, "sgld", chain, "batches"))
    noise = torch.Generator(device=device).manual_seed(derive_seed(seed, "sgld", chain, "noise"))
    return batches, noise


# The rule behind method="auto" (measured by benchmarks/llc_throughput.py; figures in
# BENCHMARKS.md): on a CPU, vmap wins while each chain's minibatch is small (one bigger batched
# matmul, Python overhead paid once); once a chain's own matmuls fill a core, the per-chain loop
# avoids vmap's extra copies and runs PyTorch's fused attention, which has no vmap rule. The
# switch sits at m ≈ 48 contexts of 16 × 5 token numbers. On CUDA the batched path always wins
# (one kernel launch per op for all chains).
_LOOP_MIN_ELEMENTS = 48 * 16 * 5


def choose_method(
    method: str, device: torch.device, batch_example: Sequence[torch.Tensor], num_chains: int, stacked: bool = False
) -> str:
    """Resolve ``method``: "batched" and "loop" are taken as given; "auto" follows the rule above.

    The rule is deterministic (no timing probe), so a rerun always takes the same path and
    gives bitwise-identical numbers.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "shared":
        raise ValueError("method='shared' needs restrictions the setting can stack; use 'auto', 'loop' or 'batched'")
    if method != "auto":
        return method
    if stacked and device.type == "cpu":
        # stacks of restrictions (R × C rows): on the language model vmap's batched embedding and
        # attention took GBs and ran slower than the loop (BENCHMARKS.md, refined LLCs)
        return "loop"
    if device.type != "cpu" or num_chains == 1:
        return "batched" if num_chains > 1 else "loop"
    row_elements = sum(x[0].numel() for x in batch_example) * batch_example[0].shape[0]
    return "loop" if row_elements >= _LOOP_MIN_ELEMENTS else "batched"


def _chain_threads(method: str, device: torch.device, compile: bool, num_chains: int) -> int:
    """How many chains the loop runs at once: one per thread torch may use, on a CPU.

    One single-threaded chain per core avoids a fork-join per op and keeps each chain's data in
    its core's cache (benchmarks/llc_throughput.py's loop/1-at-a-time column). Every chain's
    arithmetic is the same single-threaded sequence either way, so the numbers are bitwise those
    of a sequential single-threaded loop (tested). Compiled gradients run one chain at a time."""
    if method not in ("loop", "shared") or device.type != "cpu" or compile:
        return 1
    return max(1, min(torch.get_num_threads(), num_chains))


@contextlib.contextmanager
def _chain_pool(workers: int):
    """A pool of ``workers`` threads for the chains, with this thread single-threaded meanwhile
    (its OpenMP team would otherwise spin between steps on the cores the chains use); None and
    nothing changed for one worker. The caller's thread count is restored on exit."""
    if workers <= 1:
        yield None
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="sgld-chain") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def _grad_fn(flat: FlatLoss, method: str, compile: bool = False) -> Callable:
    """(w, *batch) -> (∇ℓ_m(w), ℓ_m(w)); for "batched", w and the batch carry a leading chain dim.

    The eager loop uses plain autograd: the same numbers as ``torch.func.grad`` (up to float
    rounding; tested) at about 10 % less time per call; ``torch.compile`` wants the functional form.
    """
    if method == "batched":
        return vmap(grad_and_value(flat))
    if compile:
        return grad_and_value(flat)

    def autograd(w, *batch):
        w = w.detach().requires_grad_()
        loss = flat(w, *batch)
        (grad,) = torch.autograd.grad(loss, w)
        return grad, loss.detach()

    return autograd


# The last compiled gradient function, so that estimating many checkpoints with one model object
# (weights loaded in place) compiles once: parameters enter as arguments, not as constants.
_COMPILED: dict = {}


def _compiled(model: nn.Module, loss_fn: LossFn, method: str, flat: FlatLoss) -> Callable:
    key = (id(model), loss_fn, method, tuple(flat.names), tuple(flat.shapes))
    if key not in _COMPILED:
        _COMPILED.clear()
        _COMPILED[key] = torch.compile(_grad_fn(flat, method, compile=True), dynamic=False)
    return _COMPILED[key]


def run_chains(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Sequence[torch.Tensor],
    settings: SGLDSettings,
    *,
    seed: int = 0,
    method: str = "auto",
    compile: bool = False,
    progress: bool = False,
    loss_limit: float | Sequence[float] = math.inf,
    chain_threads: int | None = None,
    restrictions: Sequence[Restriction] | None = None,
    stack: StackFactory | None = None,
) -> ChainSamples:
    """Run ``settings.num_chains`` SGLD chains from the model's current parameters w*.

    ``dataset`` is a tuple of tensors sharing their first dimension n (moved to the model's
    device). Returns every step's minibatch loss ℓ_m^{(τ)}(w_τ). A chain whose loss becomes
    non-finite or exceeds ``loss_limit`` has diverged: it is frozen from that step on (its
    later losses are NaN) while the others go on.
    ``compile=True`` wraps the gradient function in ``torch.compile``, once per model object
    and path (tens of seconds on a CPU; worth it for thousands of chain-steps at m ≥ 256, see
    benchmarks/llc_throughput.py; results agree with eager within float rounding).
    ``chain_threads`` chains of the loop run at once (default: one per torch thread on a CPU,
    see :func:`_chain_threads`; 1 runs them one at a time, each on all threads).
    ``restrictions`` (default: none, every trainable parameter) runs C chains for each, stacked
    as described in the module docstring; ``loss_limit`` may then give one limit per restriction.
    ``stack`` builds the "shared" path for them where it can; ``method`` "auto" then takes it.
    """
    n = check_dataset(dataset, settings.batch_size)
    served = shared_rows(model, loss_fn, restrictions, stack, method, compile)
    if served and len(served) < len(restrictions):  # the stackable restrictions shared, the rest alone
        kw = dict(seed=seed, progress=progress, chain_threads=chain_threads)
        limits = torch.as_tensor(loss_limit, dtype=torch.float64).expand(len(restrictions)).tolist()
        rest = [i for i in range(len(restrictions)) if i not in served]
        parts = [
            run_chains(
                model,
                loss_fn,
                dataset,
                settings,
                method="shared",
                stack=stack,
                **kw,
                restrictions=[restrictions[i] for i in served],
                loss_limit=[limits[i] for i in served],
            ),
            run_chains(
                model,
                loss_fn,
                dataset,
                settings,
                method="auto" if method == "shared" else method,
                **kw,
                compile=compile,
                restrictions=[restrictions[i] for i in rest],
                loss_limit=[limits[i] for i in rest],
            ),
        ]
        return _merge(parts, [served, rest], settings.num_chains)
    flat, masks = _restricted(model, loss_fn, restrictions)
    device, dtype = flat.w0.device, flat.w0.dtype
    data = tuple(x.to(device) for x in dataset)
    R = len(restrictions) if restrictions else 1
    C, m, P = settings.num_chains, settings.batch_size, flat.w0.numel()
    rows = R * C
    stacked = stack(model, flat, restrictions) if served else None  # served is every restriction here
    method = "shared" if served else choose_method(method, device, tuple(x[:m] for x in data), rows, stacked=R > 1)

    if method == "shared":
        grad_fn = None
    else:
        grad_fn = _compiled(model, loss_fn, method, flat) if compile else _grad_fn(flat, method)

    gens = [chain_generators(seed, c, device) for c in range(C)]
    streams = [_BatchStream(n, m, g) for g, _ in gens]
    w0 = flat.w0.expand(rows, P)
    w = flat.w0.repeat(rows, 1)
    # the noise of chain c is drawn over every trainable parameter and read at this flat's entries
    noise = torch.empty(C, flat.full_dim, device=device, dtype=dtype)
    move = None if masks is None else masks.to(device=device, dtype=dtype).repeat_interleave(C, dim=0)
    limit = torch.as_tensor(loss_limit, dtype=dtype, device=device)
    if limit.ndim:
        limit = limit.repeat_interleave(C)
    losses = torch.full((rows, settings.num_steps), float("nan"), device=device, dtype=torch.float64)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    diverged_step = torch.full((rows,), -1, dtype=torch.long, device=device)
    bt, gt, sqrt_eps = settings.beta_tilde, settings.gamma_tilde, math.sqrt(settings.epsilon)
    rmsprop = settings.sampler == "rmsprop_sgld"
    square_avg = torch.zeros(rows, P, device=device, dtype=dtype) if rmsprop else None

    steps = range(settings.num_steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"SGLD {rows} chains ({method})", unit="step")
    # The loop on a multi-core CPU runs its chains side by side, one single-threaded chain per
    # core (see _chain_threads); results do not depend on how many run at once.
    if chain_threads is None:
        workers = _chain_threads(method, device, compile, rows)
    elif int(chain_threads) != chain_threads or chain_threads < 1:
        raise ValueError(f"chain_threads must be an integer >= 1, got {chain_threads}")
    elif chain_threads > 1 and (method != "loop" or compile):
        raise ValueError("chain_threads > 1 serves the eager per-chain loop only; use method='loop' without compile")
    else:
        workers = min(int(chain_threads), rows)
    if method == "shared":  # one call per chain serves all its restrictions' rows
        workers = min(workers, C)
    local = threading.local()
    start = time.perf_counter()
    with _chain_pool(workers) as pool:

        def chain_grad(c: int, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            fn = grad_fn
            if pool is not None:  # functional_call swaps a module's parameters in place: a model per thread
                if not hasattr(local, "grad_fn"):
                    torch.set_num_threads(1)  # OpenMP's thread count is per thread: set it in the pool's
                    names = None if flat.index is None else flat.param_names
                    local.grad_fn = _grad_fn(FlatLoss(copy.deepcopy(model), loss_fn, names), method)
                fn = local.grad_fn
            return fn(w[c], *(x[c] for x in batch))

        def chain_stack(c: int, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
            fn = stacked
            if pool is not None:
                if not hasattr(local, "stacked"):
                    torch.set_num_threads(1)
                    local.stacked = stack(copy.deepcopy(model), flat, restrictions)
                fn = local.stacked
            return fn(w[c::C], *(x[c] for x in batch))  # rows r·C + c share chain c's batch

        for t in steps:
            idx = torch.stack([s.next() for s in streams]).to(device).repeat(R, 1)
            batch = tuple(x[idx] for x in data)  # (R·C, m, ...)
            for c, (_, g) in enumerate(gens):
                noise[c].normal_(generator=g)
            xi = (noise if flat.index is None else noise[:, flat.index]).repeat(R, 1)
            if method == "batched":
                grad, loss = grad_fn(w, *batch)
            elif method == "shared":
                grad, loss = torch.empty_like(w), torch.empty(rows, device=device, dtype=dtype)
                chains = range(C)
                results = (
                    pool.map(chain_stack, chains, [batch] * C) if pool else (chain_stack(c, batch) for c in chains)
                )
                for c, (g, ell) in enumerate(results):
                    grad[c::C], loss[c::C] = g, ell
            else:
                grad, loss = torch.zeros_like(w), torch.full((rows,), float("nan"), device=device, dtype=dtype)
                live = alive.nonzero().flatten().tolist()
                results = (
                    pool.map(chain_grad, live, [batch] * len(live)) if pool else (chain_grad(c, batch) for c in live)
                )
                for c, (g, ell) in zip(live, results):
                    grad[c], loss[c] = g, ell
            # A chain's offending loss is kept; from then on it is frozen and records NaN.
            losses[:, t] = torch.where(alive, loss.detach().to(torch.float64), float("nan"))
            bad = alive & ~(loss <= limit)  # also catches NaN
            diverged_step = torch.where(bad, t, diverged_step)
            alive = alive & ~bad
            # Eq. (8) as Δw = −β̃∇ℓ_m − γ̃(w − w*) + √ε ξ; frozen chains keep their last finite w.
            if rmsprop:  # Δw = −G(β̃∇ℓ_m + γ̃(w − w*)) + √(εG) ξ, G = 1/(√v + δ) (module docstring)
                square_avg.mul_(settings.rmsprop_alpha).addcmul_(grad, grad, value=1 - settings.rmsprop_alpha)
                precond = (square_avg.sqrt() + settings.rmsprop_eps).reciprocal()
                step = grad.mul(bt).add_(w - w0, alpha=gt).mul_(precond).sub_(precond.sqrt().mul_(xi), alpha=sqrt_eps)
            else:
                step = grad.mul(bt).add_(w - w0, alpha=gt).sub_(xi, alpha=sqrt_eps)
            if move is not None:  # coordinates outside the restriction stay at w*
                step = step.mul_(move)
            w = torch.where(alive[:, None], w - step, w)
    losses, diverged_step = losses.cpu(), diverged_step.cpu()  # waits for the device
    sizes = (P,) * R if masks is None else tuple(int(k) for k in masks.sum(1).tolist())
    return ChainSamples(losses, diverged_step, method, P, time.perf_counter() - start, sizes)


def shared_rows(
    model: nn.Module,
    loss_fn: LossFn,
    restrictions: Sequence[Restriction] | None,
    stack: StackFactory | None,
    method: str = "auto",
    compile: bool = False,
) -> list[int]:
    """Which restrictions :func:`run_chains` runs on the "shared" path (at least two, else none):
    those ``stack`` can serve; the others run alone on the usual path."""
    if not (stack and restrictions and len(restrictions) > 1 and not compile and method in ("auto", "shared")):
        return []
    ok = [i for i, r in enumerate(restrictions) if stack(model, _restricted(model, loss_fn, [r])[0], [r]) is not None]
    return ok if len(ok) >= 2 else []


def planned_method(
    model: nn.Module,
    loss_fn: LossFn,
    batch_example: Sequence[torch.Tensor],
    num_chains: int,
    *,
    restrictions: Sequence[Restriction] | None = None,
    stack: StackFactory | None = None,
    method: str = "auto",
    compile: bool = False,
    device: torch.device | None = None,
) -> str:
    """The path :func:`run_chains` takes with these arguments, as ``ChainSamples.method`` records
    it (``"shared+loop"``: the stackable restrictions shared, the others alone on the loop), known
    before anything runs; ``batch_example`` is one minibatch of the dataset."""
    served = shared_rows(model, loss_fn, restrictions, stack, method, compile)
    rest = (len(restrictions) if restrictions else 1) - len(served)
    if not rest:
        return "shared"
    device = device or torch.device("cpu")
    path = choose_method("auto" if served else method, device, batch_example, num_chains * rest, stacked=rest > 1)
    return f"shared+{path}" if served else path


def _merge(parts: list[ChainSamples], rows: list[list[int]], C: int) -> ChainSamples:
    """Chain samples of several groups of restrictions, back in the restrictions' order."""
    order = [i for group in rows for i in group]
    back = torch.tensor([order.index(i) for i in range(len(order))])
    per_row = (back[:, None] * C + torch.arange(C)).flatten()  # block r of the result is block back[r]
    sizes = [k for p in parts for k in p.num_params_per_restriction]
    return ChainSamples(
        torch.cat([p.loss for p in parts])[per_row],
        torch.cat([p.diverged_step for p in parts])[per_row],
        "+".join(dict.fromkeys(p.method for p in parts)),
        max(p.num_params for p in parts),  # the widest flat of the parts
        sum(p.seconds for p in parts),
        tuple(sizes[b] for b in back.tolist()),
    )


def _restricted(
    model: nn.Module, loss_fn: LossFn, restrictions: Sequence[Restriction] | None
) -> tuple[FlatLoss, torch.Tensor | None]:
    """The flat loss over the parameter tensors the restrictions touch (all of them without
    restrictions) and one boolean row per restriction over its entries (None when no restriction
    freezes anything: the plain sampler, bitwise)."""
    if not restrictions:
        return FlatLoss(model, loss_fn), None
    params = dict(model.named_parameters())
    for r in restrictions:
        unknown = [k for k in r.masks if k not in params or not params[k].requires_grad]
        if unknown:
            raise ValueError(f"restriction {r.name!r} names {unknown[0]!r}, not a trainable parameter of the model")
    if all(r.is_everything(model) for r in restrictions):
        return FlatLoss(model, loss_fn), None
    touched = {k for r in restrictions for k in r.masks}
    flat = FlatLoss(model, loss_fn, [k for k in params if k in touched])
    rows = []
    for r in restrictions:
        parts = []
        for k in flat.param_names:
            m = r.masks.get(k, False)
            if m is None:
                parts.append(torch.ones(params[k].numel(), dtype=torch.bool))
            elif m is False:
                parts.append(torch.zeros(params[k].numel(), dtype=torch.bool))
            else:
                parts.append(m.reshape(-1).cpu())
        rows.append(torch.cat(parts))
    return flat, torch.stack(rows)
