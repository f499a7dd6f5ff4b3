"""Per-(batch, class) voxel sums: the statistics every Dice-family, CE-family and map loss is a formula of.

``class_stats(input, target, spec)`` returns a ``(B, C, K)`` float32 tensor (float64 for float64
input), column ``k`` holding the sum over voxels of the per-voxel quantity ``spec.columns[k]``:

============== ======================================================================
column          per-voxel quantity summed (p: activated prediction, g: target, m: mask)
============== ======================================================================
``pg``          p·g
``p``           p
``pp``          p²
``g``           g
``gg``          g²
``absdiff``     |p − g|
``sqerr_pos``   (g − p)²·g          (sensitivity term of the SS loss)
``sqerr_neg``   (g − p)²·(1 − g)    (specificity term of the SS loss)
``ce``          −g·log p (softmax / probabilities) or the binary CE −[g log p + (1−g) log(1−p)] (sigmoid)
``focal``       MONAI's focal term (softmax or sigmoid form, with ``gamma`` and ``alpha``)
``ce_pow``      g·(−log p)^``ce_exponent``  (the CE part of the exponential logarithmic loss)
``map_ce``      w·(−g·log p), w = ``voxel_map``  (distance-penalised CE)
``map_p``       w·p               (boundary loss, w = signed distance φ)
``map_sqerr``   w·(p − g)²        (Hausdorff loss, w = d_G² + d_S²)
``count``       1                 (number of counted voxels, same in every class)
``sigmoid_focal`` MONAI's sigmoid focal term of the logit x itself, whatever the activation (so that
                a softmax Dice and MONAI's sigmoid focal part share one pass; equals ``focal`` for sigmoid)
``aux_pg``      p·a,  a = [aux = c]·m the one-hot of the target's second label map (``Target.aux_labels``,
                e.g. the skeleton of Skeleton Recall) under the primary target's mask; 0 without aux labels
``aux_g``       a
============== ======================================================================

Every quantity is multiplied by the ignore mask ``m`` (MONAI multiplies p and g by it; terms linear in
p and g get m, quadratic ones m², which is the same for a 0/1 mask). Nothing of size B·C·N is kept by
the kernels; this torch backend materialises per-voxel tensors and lets autograd differentiate them, and
serves CPU tensors and as the second opinion for the Triton kernels (``ops/triton_stats.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._validation import Target, _is_compiling, label_checks_enabled, labels_checked_once

from .stats_spec import ACTIVATIONS, AUX_COLUMNS, COLUMNS, StatsSpec  # noqa: F401  (re-exported)


def compute_dtype(input: torch.Tensor) -> torch.dtype:
    """float32 accumulation for every input dtype except float64."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "softmax":
        return torch.softmax(x, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(x)
    return x


def log_prob(x: torch.Tensor, activation: str, log_eps: float = 0.0) -> torch.Tensor:
    """log p, computed stably from the logits."""
    if activation == "softmax":
        return torch.log_softmax(x, dim=1)
    if activation == "sigmoid":
        return F.logsigmoid(x)
    return torch.log(x.clamp_min(log_eps)) if log_eps > 0 else torch.log(x)


def voxel_terms(
    x: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None
) -> dict:
    """Per-voxel ``(B, C, N)`` tensors for the requested columns, masked. ``x`` is ``(B, C, N)``."""
    dt = compute_dtype(x)
    x = x.to(dt)
    B, C, N = x.shape
    p = activate(x, spec.activation)
    g = target.dense(dt)
    m = None if target.mask is None else target.mask.to(dt).unsqueeze(1)
    if target.raw_labels is not None and not label_checks_enabled():
        # Out-of-range labels (possible only with the label check off) are ignored voxels, as in the
        # kernels; with the check on every label is in range or ignore_index (masked above).
        if target.regions is not None:  # any label >= 0 is a voxel (a label outside every region: g = 0)
            valid = (target.labels >= 0).to(dt).unsqueeze(1)
        else:
            hi = 2 if C == 1 else C
            valid = ((target.labels >= 0) & (target.labels < hi)).to(dt).unsqueeze(1)
        m = valid if m is None else m * valid
    pm = p if m is None else p * m  # MONAI masks p and g alike; g is already masked by dense()
    need = set(spec.columns)
    out = {}
    if "pg" in need:
        out["pg"] = pm * g
    if "p" in need:
        out["p"] = pm
    if "pp" in need:
        out["pp"] = pm * pm
    if "g" in need:
        out["g"] = g
    if "gg" in need:
        out["gg"] = g * g
    if "absdiff" in need:
        out["absdiff"] = (pm - g).abs()
    if "sqerr_pos" in need:
        out["sqerr_pos"] = (g - pm) ** 2 * g
    if "sqerr_neg" in need:
        one = torch.ones_like(g) if m is None else m.expand_as(g)
        out["sqerr_neg"] = (g - pm) ** 2 * (one - g)
    if need & {"ce", "focal", "ce_pow", "map_ce"}:
        logp = log_prob(x, spec.activation, spec.log_eps)
        if spec.activation == "softmax":  # a −inf logit on a class with g = 0: its term is the limit 0, not 0·(−inf)
            logp = torch.where((g == 0) & (logp == float("-inf")), torch.zeros((), dtype=logp.dtype, device=logp.device),
                               logp)
        if spec.activation == "sigmoid":
            log1mp = F.logsigmoid(-x)
            ce = -(g * logp + ((1.0 if m is None else m) - g) * log1mp)
        else:
            ce = -g * logp
        if "ce" in need:
            out["ce"] = ce
        if "map_ce" in need:
            out["map_ce"] = ce * voxel_map.to(dt)
        if "ce_pow" in need:
            # g·(−log p)^γ: (−log p) ≥ 0; clamp keeps the pow's gradient finite at p = 1 (γ < 1).
            nl = (-logp).clamp_min(torch.finfo(dt).tiny)
            out["ce_pow"] = g * nl ** spec.ce_exponent
        if "focal" in need:
            out["focal"] = _focal_term(x, g, m, logp, spec)
    if "sigmoid_focal" in need:
        out["sigmoid_focal"] = _focal_term(x, g, m, None, dataclasses.replace(spec, activation="sigmoid"))
    if "map_p" in need:
        out["map_p"] = pm * voxel_map.to(dt)
    if "map_sqerr" in need:
        out["map_sqerr"] = (pm - g) ** 2 * voxel_map.to(dt)
    if "count" in need:
        cnt = torch.ones(B, 1, N, dtype=dt, device=x.device) if m is None else m
        out["count"] = cnt.expand(B, C, N)
    if need & {"aux_pg", "aux_g"}:
        # the second label map's one-hot under the same mask as g: aux_pg is pg with a for g (m² as pg's)
        ga = target.aux_onehot(dt)
        if m is not None:
            ga = ga * m
        out["aux_pg"] = pm * ga
        out["aux_g"] = ga
    return out


def _focal_term(x, g, m, logp, spec: StatsSpec) -> torch.Tensor:
    """MONAI 1.6 FocalLoss per-voxel term (before its optional class ``weight``)."""
    gamma = spec.gamma
    if spec.activation == "sigmoid":
        # MONAI sigmoid_focal_loss: BCE-with-logits · exp(γ·logsigmoid(−x·(2g−1))) [· α_t]
        xm = x if m is None else x * m  # MONAI masks the input before the loss
        bce = xm - xm * g - F.logsigmoid(xm)
        inv = F.logsigmoid(-xm * (g * 2 - 1))
        term = torch.exp(inv * gamma) * bce
        if spec.alpha is not None:
            term = (g * spec.alpha + (1 - g) * (1 - spec.alpha)) * term
    else:
        # MONAI softmax_focal_loss: −(1 − p)^γ · log p · g [· α_c], α_c = 1−α for class 0, α otherwise
        p = logp.exp()
        term = -((1 - p) ** gamma) * logp * g
        if spec.alpha is not None:
            C = x.shape[1]
            a = torch.full((C,), spec.alpha, dtype=x.dtype, device=x.device)
            a[0] = 1 - spec.alpha
            term = term * a.view(1, C, 1)
    if m is not None:
        term = term * m
    return term


def class_stats_torch(
    input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Torch backend of :func:`class_stats`: ``(B, C, K)`` sums, differentiable by autograd."""
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1)
    if (set(spec.columns) <= _LABEL_FAST and target.raw_labels is not None and C > 1 and spec.activation == "softmax"
            and target.regions is None):
        return _label_stats_softmax(x, target, spec)
    if voxel_map is not None:
        voxel_map = voxel_map.reshape(B, -1, x.shape[2])
    terms = voxel_terms(x, target, spec, voxel_map)
    return torch.stack([terms[c].sum(dim=2) for c in spec.columns], dim=2)


_LABEL_FAST = frozenset(("pg", "p", "pp", "g", "gg", "ce", "count", "aux_pg", "aux_g"))


def _label_stats_softmax(x: torch.Tensor, target: Target, spec: StatsSpec) -> torch.Tensor:
    """The Dice/CE columns for integer labels and a softmax without a one-hot tensor: the terms that
    carry g are gathered at each voxel's label and scattered into per-class bins (one value per voxel
    instead of C); the rest are plain sums. Same values as :func:`voxel_terms` (autograd through
    gather/scatter_add)."""
    dt = compute_dtype(x)
    B, C, N = x.shape
    logp = torch.log_softmax(x.to(dt), dim=1)
    p = logp.exp() if {"pg", "p", "pp", "aux_pg"} & set(spec.columns) else None
    lab = target.labels
    valid = None if target.mask is None else target.mask.to(dt)
    if target.ignore_index is not None or not label_checks_enabled():
        in_range = (lab >= 0) & (lab < C)  # out-of-range labels are ignored voxels, as in the kernels
        lab = torch.where(in_range, lab, torch.zeros_like(lab))
        valid = in_range.to(dt) if valid is None else valid * in_range.to(dt)
    idx = lab.unsqueeze(1)  # (B, 1, N)

    def per_class(v):  # Σ over the voxels of each label class of the per-voxel value v (B, N)
        v = v if valid is None else v * valid
        return torch.zeros(B, C, dtype=dt, device=x.device).scatter_add(1, lab, v)

    pm = p if valid is None or p is None else p * valid.unsqueeze(1)
    aux = target.aux_long
    if aux is not None and {"aux_pg", "aux_g"} & set(spec.columns):
        # the aux labels' classes (aux labels equal to ignore_index, or out of range, count nowhere), binned as
        # the labels' under the primary mask
        aux_ok = (aux >= 0) & (aux < C)
        ign = target.ignore_index
        if ign is not None and -(2**63) <= ign < 2**63:
            aux_ok &= aux != ign
        aux_w = aux_ok.to(dt) if valid is None else aux_ok.to(dt) * valid
        aux_lab = torch.where(aux_ok, aux, torch.zeros_like(aux))

    def per_aux_class(v):  # Σ over the voxels of each aux class of v (B, N)
        return torch.zeros(B, C, dtype=dt, device=x.device).scatter_add(1, aux_lab, v * aux_w)

    out = []
    for col in spec.columns:
        if col in ("aux_pg", "aux_g") and aux is None:
            out.append(torch.zeros(B, C, dtype=dt, device=x.device))
        elif col == "aux_pg":
            out.append(per_aux_class(p.gather(1, aux_lab.unsqueeze(1)).squeeze(1)))
        elif col == "aux_g":
            out.append(per_aux_class(torch.ones(B, N, dtype=dt, device=x.device)))
        elif col == "pg":
            out.append(per_class(p.gather(1, idx).squeeze(1)))
        elif col == "p":
            out.append(pm.sum(dim=2))
        elif col == "pp":
            out.append((pm * pm).sum(dim=2))
        elif col in ("g", "gg"):
            out.append(per_class(torch.ones(B, N, dtype=dt, device=x.device)))
        elif col == "ce":
            out.append(per_class(-logp.gather(1, idx).squeeze(1)))
        else:  # count: the counted voxels, in every class
            n = torch.full((B,), float(N), dtype=dt, device=x.device) if valid is None else valid.sum(dim=1)
            out.append(n.unsqueeze(1).expand(B, C))
    return torch.stack(out, dim=2)


def _compute(input, target, spec, voxel_map):
    from ..backend import use_compiled_cpu, use_triton

    if use_triton(input):
        from .triton_stats import class_stats_triton, supports

        if supports(input, target, spec, voxel_map):
            return class_stats_triton(input, target, spec, voxel_map)
    elif use_compiled_cpu(input):
        from . import cpu_stats

        # a region table needs kernels that read it (cpu_stats.READS_REGIONS); else the torch backend
        reads_regions = target.regions is None or getattr(cpu_stats, "READS_REGIONS", False)
        if reads_regions and cpu_stats.supports(input, target, spec, voxel_map):
            return cpu_stats.class_stats_cpu(input, target, spec, voxel_map)
    return class_stats_torch(input, target, spec, voxel_map)


# One forward of a compound loss (Dice + CE, Dice + focal, Dice + BD, ...) asks for the statistics of
# the same logits several times, with different columns. Inside ``shared_statistics(columns, **params)``
# the first request computes the union of its columns and ``columns`` in one pass, and later requests
# with the same logits, target and activation take their columns from it: one read of the logits
# forward and one backward kernel (autograd adds the slices' gradients into one (B, C, K) tensor).
_SHARED: contextvars.ContextVar = contextvars.ContextVar("fastloss_shared_statistics", default=None)
_PARAM_FIELDS = ("gamma", "alpha", "ce_exponent", "log_eps")
_LOG_COLUMNS = ("ce", "focal", "ce_pow", "map_ce")


def _param_signature(spec: StatsSpec, columns) -> tuple:
    """The spec parameters that change the requested columns' values."""
    sig = []
    if "focal" in columns or "sigmoid_focal" in columns:
        sig += [("gamma", spec.gamma), ("alpha", spec.alpha)]
    if "ce_pow" in columns:
        sig.append(("ce_exponent", spec.ce_exponent))
    if spec.activation == "none" and set(columns) & {"ce", "focal", "ce_pow", "map_ce"}:
        sig.append(("log_eps", spec.log_eps))
    return tuple(sig)


@contextlib.contextmanager
def shared_statistics(
    columns: Tuple[str, ...] = (), voxel_map: Optional[torch.Tensor] = None, voxel_ce: bool = False,
    aux_labels: Optional[torch.Tensor] = None, **params
):
    """Share one statistics pass between the parts of a compound loss (see above).

    ``voxel_ce=True``: where the compiled CPU kernels serve the shared pass (softmax, integer labels, the
    Dice/CE columns), the pass also yields the per-voxel CE ``−log p_y``, which a later part (DiceTopK's
    TopK) takes with :func:`shared_voxel_ce` instead of reading the logits again; one backward kernel then
    serves both parts.

    ``params`` (``gamma``, ``alpha``, ``ce_exponent``, ``log_eps``) are the :class:`StatsSpec`
    parameters the shared pass uses; a request whose columns need other values is computed on its own,
    so the result never depends on whether a context is active. ``voxel_map`` is the map the shared
    pass uses for its ``map_*`` columns (a request with another map is computed on its own).

    ``aux_labels``: the ``(B, N)`` second label map (:func:`fastloss._validation.attach_aux_labels`'s
    ``Target.aux_labels``) the shared pass carries for its ``aux_pg`` / ``aux_g`` columns, so that a compound
    whose parts' targets know nothing of it (DiceCE + Skeleton Recall: Dice and CE on the labels, the recall on
    their skeleton) reads the logits once; a request whose target carries other aux labels is computed on its own.
    Re-entrant (the outer context wins).
    """
    unknown = set(params) - set(_PARAM_FIELDS)
    if unknown:
        raise TypeError(f"shared_statistics got unknown parameters {sorted(unknown)}; known: {_PARAM_FIELDS}")
    if _is_compiling():  # no sharing while torch.compile traces (see class_stats)
        yield
        return
    if _SHARED.get() is not None:
        yield
        return
    token = _SHARED.set(
        {"columns": tuple(columns), "params": params, "map": voxel_map, "cache": {}, "voxel_ce": bool(voxel_ce),
         "aux": aux_labels}
    )
    try:
        with labels_checked_once():
            yield
    finally:
        _SHARED.reset(token)


def _tensor_key(t: Optional[torch.Tensor]):
    """Identity of a tensor's data: two views with this key read the same values."""
    if t is None:
        return None
    stride = None if t.is_contiguous() else tuple(t.stride())
    return (t.data_ptr(), t.numel(), t.dtype, t.device, t._version, stride)


def _shared_key(input: torch.Tensor, target: Target, activation: str) -> tuple:
    # The ignore mask is not part of the key: prepare_target derives it from the target and ignore_index. Nor
    # are the aux labels: the pass's own are kept beside it (class_stats compares them where a request reads them).
    return (
        _tensor_key(input), tuple(input.shape[:2]), _tensor_key(target.raw_labels), _tensor_key(target.soft),
        target.ignore_index, target.num_classes, activation, _tensor_key(target.regions),
    )


def _compute_with_voxel_ce(input, target, spec):
    """``(stats, voxel CE or None)``: both from one compiled pass where it applies, else the stats alone."""
    from ..backend import use_compiled_cpu

    if use_compiled_cpu(input):
        from .cpu_stats import class_stats_with_voxel_ce_cpu, fused_voxel_ce_supported

        if fused_voxel_ce_supported(input, target, spec):
            return class_stats_with_voxel_ce_cpu(input, target, spec)
    return _compute(input, target, spec, None), None


def shared_voxel_ce(input: torch.Tensor, target: Target) -> Optional[torch.Tensor]:
    """The ``(B, N)`` per-voxel softmax CE of ``input`` and ``target`` that the active
    ``shared_statistics(voxel_ce=True)`` pass computed, or None (no context, another input, or a pass the
    compiled kernels did not serve)."""
    if _is_compiling():
        return None
    shared = _SHARED.get()
    if shared is None:
        return None
    hit = shared["cache"].get(_shared_key(input, target, "softmax"))
    return None if hit is None else hit[3]


def _sigmoid_focal_from_shared(shared: dict, input: torch.Tensor, target: Target, spec: StatsSpec):
    """A sigmoid focal request (MONAI DiceFocal's focal part) served by the ``sigmoid_focal`` column of a
    shared pass over the same logits and target with another activation (its softmax Dice part), or None.
    The column is the sigmoid focal term of the logits whatever the pass's activation, so it is this
    request's ``focal`` column."""
    for activation in ("softmax", "none"):
        hit = shared["cache"].get(_shared_key(input, target, activation))
        if hit is None:
            continue
        full_spec, full = hit[0], hit[1]
        # the request's "focal" is the pass's "sigmoid_focal"; "count" (the counted voxels, the same for
        # any activation) is the pass's own
        names = ["sigmoid_focal" if c == "focal" else c for c in spec.columns]
        if set(names) <= set(full_spec.columns) and (full_spec.gamma, full_spec.alpha) == (spec.gamma, spec.alpha):
            idx = [full_spec.columns.index(c) for c in names]
            return full[..., idx[0] : idx[0] + 1] if len(idx) == 1 else full[..., idx]
    return None


def class_stats(
    input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(B, C, K)`` per-(batch, class) sums of ``spec.columns``; dispatches to the active backend."""
    if _is_compiling():
        # Dynamo cannot trace ContextVar.get or data_ptr(): while torch.compile traces, every request is
        # computed on its own (same values; the sharing only saves passes over the logits).
        return _compute(input, target, spec, voxel_map)
    shared = _SHARED.get()
    if shared is None:
        return _compute(input, target, spec, voxel_map)
    key = _shared_key(input, target, spec.activation)
    hit = shared["cache"].get(key)
    if hit is None and spec.activation == "sigmoid" and spec.columns in (("focal",), ("focal", "count")):
        aliased = _sigmoid_focal_from_shared(shared, input, target, spec)
        if aliased is not None:
            return aliased
    # the aux labels a request's aux columns read: its target's, else the context's
    ctx_aux = shared.get("aux")
    req_aux = target.aux_labels if target.aux_labels is not None else ctx_aux
    uses_aux = any(c in AUX_COLUMNS for c in spec.columns)
    if hit is None and target.aux_labels is not None and ctx_aux is not None \
            and _tensor_key(target.aux_labels) != _tensor_key(ctx_aux):
        return _compute(input, target, spec, voxel_map)  # other aux labels than the shared pass's: on its own
    if hit is None:
        base = dict(gamma=spec.gamma, alpha=spec.alpha, ce_exponent=spec.ce_exponent, log_eps=spec.log_eps)
        base.update(shared["params"])
        extra = shared["columns"]
        pass_target = target if req_aux is None or target.aux_labels is not None else target.with_aux(req_aux)
        if pass_target.aux_labels is None:  # no aux labels: the aux columns would be zeros
            extra = tuple(c for c in extra if c not in AUX_COLUMNS)
        if spec.activation == "none":
            # raw input: log-based columns may be NaN where the input is not a probability, and an unused
            # NaN column would still poison the gradient (0 · NaN); add them only when asked for.
            extra = tuple(c for c in extra if c not in _LOG_COLUMNS)
        wanted = tuple(dict.fromkeys(spec.columns + extra))
        vmap = voxel_map if voxel_map is not None else shared["map"]
        if vmap is None:
            wanted = tuple(c for c in wanted if not c.startswith("map_"))
        full_spec = StatsSpec(spec.activation, wanted, **base)
        vce = None
        if shared.get("voxel_ce") and vmap is None:
            full, vce = _compute_with_voxel_ce(input, pass_target, full_spec)
        else:
            full = _compute(input, pass_target, full_spec, vmap)
        hit = (full_spec, full, _tensor_key(vmap), vce, _tensor_key(pass_target.aux_labels))
        shared["cache"][key] = hit
    full_spec, full, map_key, _, aux_key = hit
    uses_map = any(c.startswith("map_") for c in spec.columns)
    if (
        not set(spec.columns) <= set(full_spec.columns)
        or _param_signature(spec, spec.columns) != _param_signature(full_spec, spec.columns)
        or (uses_map and _tensor_key(voxel_map) != map_key)
        or (uses_aux and _tensor_key(req_aux) != aux_key)
    ):
        if uses_aux and target.aux_labels is None and req_aux is not None:
            target = target.with_aux(req_aux)
        return _compute(input, target, spec, voxel_map)
    idx = [full_spec.columns.index(c) for c in spec.columns]
    if idx == list(range(len(full_spec.columns))):
        return full
    return full[..., idx]
