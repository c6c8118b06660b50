"""RoPE in one place: read, change and check the rotary embedding of a Hugging Face config.

The description of a model's RoPE is the transformers config itself: `rope_parameters` (transformers 5.x:
rope_type, rope_theta, factor, ...) plus `max_position_embeddings`. `apply_scheme` rewrites those fields, so an
extended checkpoint is a plain Hugging Face folder that any transformers user loads with the new window; training
and evaluation read the same fields; `inv_freq` recomputes the frequencies from them with our own formulas (fp32
result, float64 arithmetic) and `check_rotary` verifies that a loaded model's rotary module agrees.

    from longreach.model import rope
    rope.apply_scheme(config, "yarn", target_len=32768)         # config fields only (e.g. before building)
    rope.extend_model(model, "theta", target_len=131072)        # a loaded model: config + rotary rebuilt
    rope.recommended_base(131072, head_dim=128)                 # the Men et al. bound, printed on stderr
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
from typing import Any

import numpy as np

from longreach.errors import InputError

SCHEMES = ("theta", "pi", "ntk", "yarn", "llama3")
# rope_type values of transformers whose frequencies `inv_freq` reproduces.
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")

YARN_BETA_FAST = 32.0  # YaRN: dimensions turning more than this many times in the original window keep their frequency
YARN_BETA_SLOW = 1.0  # YaRN: dimensions turning less than this are fully interpolated
LLAMA3_LOW_FREQ_FACTOR = 1.0  # Llama 3.1: wavelengths above original/low are divided by the factor
LLAMA3_HIGH_FREQ_FACTOR = 4.0  # Llama 3.1: wavelengths below original/high are kept
BOUND_GRID_PER_DECADE = 50  # bases tried per factor 10 when searching the Men et al. bound


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# Reading a config (transformers 5.x `rope_parameters`; 4.x `rope_theta` + `rope_scaling` as a fallback)
# ----------------------------------------------------------------------------------------------------------

def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config) -> dict[str, Any]:
    """The flat RoPE parameter dict (rope_type, rope_theta, factor, ...) whatever the transformers version."""
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
    else:  # transformers 4.x layout
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    params.setdefault("rope_type", "default")
    if params["rope_type"] in ("yarn", "llama3"):
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    if params["rope_type"] == "yarn" and params.get("factor") is None:  # as transformers: the window ratio
        params["factor"] = config.max_position_embeddings / params["original_max_position_embeddings"]
    return params


def _set_rope_parameters(config, params: dict[str, Any]) -> None:
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = dict(params)
    else:  # transformers 4.x
        config.rope_theta = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        config.rope_scaling = None if scaling["rope_type"] == "default" else scaling


def legacy_fields(config) -> dict[str, Any]:
    """`rope_theta` and `rope_scaling` as transformers 4.x reads them from config.json.

    transformers 5 writes only `rope_parameters`; a 4.x user would silently get base 10000 without these.
    transformers 5 reads `rope_scaling` back into `rope_parameters` (with `rope_theta` as its base), so both
    agree."""
    params = rope_parameters(config)
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return {"rope_theta": params["rope_theta"],
            "rope_scaling": None if scaling["rope_type"] == "default" else scaling}


# ----------------------------------------------------------------------------------------------------------
# Frequencies (our own formulas; unit tests compare them with transformers for every rope_type)
# ----------------------------------------------------------------------------------------------------------

def _base_inv_freq(base: float, dim: int) -> np.ndarray:
    return 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def yarn_attention_factor(factor: float) -> float:
    """YaRN's attention temperature: 0.1 ln(s) + 1 (1 when not scaled)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def inv_freq(config, seq_len: int | None = None):
    """Inverse frequencies of `config`'s RoPE as a float32 torch tensor [rotary_dim // 2].

    `seq_len` matters only for dynamic NTK, whose base grows once the input is longer than the window."""
    import torch

    p = rope_parameters(config)
    kind, base = p["rope_type"], float(p["rope_theta"])
    dim = int(head_dim(config) * p.get("partial_rotary_factor", 1.0))
    if kind == "default":
        freq = _base_inv_freq(base, dim)
    elif kind == "linear":  # position interpolation: every angle divided by the factor
        freq = _base_inv_freq(base, dim) / p["factor"]
    elif kind == "dynamic":  # NTK-aware base that grows with the current length beyond the window
        window = config.max_position_embeddings
        length = max(seq_len or window, window)
        s = p["factor"] * length / window - (p["factor"] - 1)
        freq = _base_inv_freq(base * s ** (dim / (dim - 2)), dim)
    elif kind == "yarn":
        freq = _yarn_inv_freq(base, dim, p)
    elif kind == "llama3":
        freq = _llama3_inv_freq(base, dim, p)
    else:
        raise InputError(f"rope_type {kind!r} is not supported; supported: {ROPE_TYPES}", field="rope_type")
    return torch.tensor(freq, dtype=torch.float32)


def _yarn_inv_freq(base: float, dim: int, p: dict[str, Any]) -> np.ndarray:
    factor, window = p["factor"], p["original_max_position_embeddings"]
    beta_fast, beta_slow = p.get("beta_fast") or YARN_BETA_FAST, p.get("beta_slow") or YARN_BETA_SLOW

    def dim_turning(turns: float) -> float:
        # the dimension index whose wavelength fits `turns` times into the original window
        return dim * math.log(window / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_turning(beta_fast), dim_turning(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if high == low:
        high += 0.001
    # 0 -> keep the original frequency (fast dims), 1 -> divide by the factor (slow dims), linear in between
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    orig = _base_inv_freq(base, dim)
    return orig * (1 - ramp) + orig / factor * ramp


def _llama3_inv_freq(base: float, dim: int, p: dict[str, Any]) -> np.ndarray:
    factor, window = p["factor"], p["original_max_position_embeddings"]
    low_f, high_f = p["low_freq_factor"], p["high_freq_factor"]
    orig = _base_inv_freq(base, dim)
    wavelen = 2 * math.pi / orig
    smooth = np.clip((window / wavelen - low_f) / (high_f - low_f), 0.0, 1.0)
    # smooth = 1: short wavelengths kept; 0: long wavelengths divided by factor; blended in between
    out = (1 - smooth) * orig / factor + smooth * orig
    out = np.where(wavelen < window / high_f, orig, out)
    return np.where(wavelen > window / low_f, orig / factor, out)


def attention_scaling(config) -> float:
    """Factor transformers multiplies cos/sin by (YaRN's temperature; 1 for every other type)."""
    p = rope_parameters(config)
    if p["rope_type"] != "yarn":
        return 1.0
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    factor = p["factor"]
    mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")
    if mscale and mscale_all:
        return (0.1 * mscale * math.log(factor) + 1) / (0.1 * mscale_all * math.log(factor) + 1) \
            if factor > 1 else 1.0
    return yarn_attention_factor(factor)


def rotary_module(model):
    """The model's rotary embedding module (the one holding `inv_freq`)."""
    for _, module in model.named_modules():
        if hasattr(module, "inv_freq") and hasattr(module, "attention_scaling"):
            return module
    raise RuntimeError(f"{type(model).__name__} has no rotary embedding module with inv_freq")


def check_rotary(model, expected=None, rtol: float = 1e-5) -> None:
    """Raise if the loaded model's rotary frequencies differ from what its config (or `expected`) says.

    Guards against a transformers version that silently ignores a RoPE override (the model would keep the
    old base and train badly)."""
    import torch

    module = rotary_module(model)
    want = inv_freq(model.config) if expected is None else expected.float()
    got = module.inv_freq
    if rope_parameters(model.config)["rope_type"] == "dynamic" and getattr(module, "original_inv_freq", None) \
            is not None:
        got = module.original_inv_freq  # inv_freq itself grows with the longest input seen so far
    if got.dtype != torch.float32:
        raise RuntimeError(f"the model's rotary inv_freq is {got.dtype}, not float32 (model.to(dtype) casts it, "
                           "and RoPE angles at long positions break); call rope.refresh_rotary(model) after it")
    if got.shape != want.shape or not torch.allclose(got.detach().float().cpu(), want, rtol=rtol, atol=0):
        raise RuntimeError(
            f"the model's rotary embedding does not use the configured RoPE {rope_parameters(model.config)}: "
            f"inv_freq[-1] is {float(got[-1]):.6g}, expected {float(want[-1]):.6g}. This transformers version "
            "may ignore the config's RoPE fields; use transformers >= 5.5")
    want_scale = attention_scaling(model.config)
    if not math.isclose(float(module.attention_scaling), want_scale, rel_tol=1e-6):
        raise RuntimeError(f"rotary attention scaling is {module.attention_scaling}, expected {want_scale}")


# ----------------------------------------------------------------------------------------------------------
# The base a target length needs (Men et al. 2024, "Base of RoPE Bounds Context Length")
# ----------------------------------------------------------------------------------------------------------

def first_negative_position(base: float, head_dim: int, max_len: int) -> int | None:
    """First position m <= max_len where B_m = sum_i cos(m * theta_i) < 0, or None if B stays >= 0.

    Positions are split as m = s + j (s a multiple of C ~ sqrt(max_len), 0 <= j < C), so by
    cos(s t + j t) = cos(s t) cos(j t) - sin(s t) sin(j t) all of B is two small matrix products instead of
    max_len x head_dim/2 cosines (float64 throughout; agrees with the direct sum to ~1e-11)."""
    return first_negative_of(_base_inv_freq(base, head_dim), max_len)


def bound_reach(config, target_len: int) -> int | None:
    """Where `config`'s RoPE frequencies (any scheme) first fail the Men et al. condition B_m >= 0, up to
    target_len; None if they hold throughout. The condition was derived for a base; applied to the frequencies
    a scheme produces, it predicted where NIAH fell in longreach's SmolLM2 runs (docs/RESULTS.md session 9:
    base 3e7 fails at 45.7K and lost 48K; YaRN x16 from base 1e5 fails at 19.4K and lost 32K and beyond)."""
    return first_negative_of(inv_freq(config, seq_len=target_len).double().numpy(), target_len)


def first_negative_of(theta: np.ndarray, max_len: int) -> int | None:
    """first_negative_position for any set of inverse frequencies."""
    theta = np.asarray(theta, dtype=np.float64)
    step = math.isqrt(max_len + 1) + 1
    inner = np.arange(step, dtype=np.float64)[:, None] * theta
    outer = np.arange(0, max_len + 1, step, dtype=np.float64)[:, None] * theta
    b = np.cos(outer) @ np.cos(inner).T - np.sin(outer) @ np.sin(inner).T  # [m // step, m % step]
    neg = np.flatnonzero(b.reshape(-1)[: max_len + 1] < 0)
    return int(neg[0]) if neg.size else None


@functools.lru_cache(maxsize=64)
def base_lower_bound(target_len: int, head_dim: int, per_decade: int = BOUND_GRID_PER_DECADE) -> float:
    """Smallest base on a grid of `per_decade` bases per factor 10 above which no grid base fails the bound.

    The bound of Men et al.: B_m = sum_i cos(m * base^(-2i/d)) >= 0 for every m <= target_len. Whether a base
    passes is not monotone in the base (near its first zero B_m wobbles by about +-1 from the fast dimensions,
    so isolated bases fail well above the first passing one). We climb by octaves from base = target_len while
    bases fail, then scan the grid from the last failing octave until three octaves pass in a row; the answer
    is the grid base just above the last failure."""
    if target_len < 1 or head_dim < 4 or head_dim % 2:
        raise InputError(f"need target_len >= 1 and an even head_dim >= 4, got {target_len}, {head_dim}")

    def fails(k: int) -> bool:
        return first_negative_position(10 ** (k / per_decade), head_dim, target_len) is not None

    start = math.floor(per_decade * math.log10(max(target_len, 10)))
    octave = round(per_decade * math.log10(2))
    with _one_blas_thread():
        k = start
        while fails(k):
            k += octave
        k = max(start, k - octave)
        last_fail = k - 1
        while k - last_fail <= 3 * octave:
            if fails(k):
                last_fail = k
            k += 1
    return 10 ** ((last_fail + 1) / per_decade)


def _one_blas_thread():
    # The products are small (sqrt(L) x 64); threaded BLAS only adds spin-waiting, 4-10x slower on a busy CPU.
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn (sentence-transformers)
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def recommended_base(target_len: int, head_dim: int, verbose: bool = True) -> float:
    """A RoPE base safe for `target_len` at `head_dim`: the numeric Men et al. bound rounded up to 2 digits."""
    bound = base_lower_bound(int(target_len), int(head_dim))
    exp = math.floor(math.log10(bound)) - 1
    base = float(math.ceil(bound / 10 ** exp) * 10 ** exp)
    if verbose:
        _log(f"rope: base for {target_len} tokens at head dim {head_dim}: {base:.3g} (Men et al. bound "
             f"sum_i cos(m theta_i) >= 0 for m <= {target_len}, computed: {bound:.4g}; their fit for head dim "
             f"128: {0.0424 * target_len ** 1.628:.3g})")
    return base


# ----------------------------------------------------------------------------------------------------------
# Extension schemes: rewrite the config fields
# ----------------------------------------------------------------------------------------------------------

def apply_scheme(config, scheme: str, target_len: int, base: float | None = None, factor: float | None = None,
                 dynamic: bool = False, attention_factor: float | None = None,
                 verbose: bool = True) -> dict[str, Any]:
    """Rewrite `config`'s RoPE fields in place to reach `target_len` tokens; return a summary dict.

    theta:  new base (`base`, or `recommended_base(target_len, head_dim)`); an existing scaling (e.g. Llama 3.1's
            llama3 type) is kept. pi: linear interpolation by `factor`. ntk: static NTK-aware base
            b * s^(d/(d-2)), or with `dynamic` transformers' dynamic NTK (the base grows with the input length).
            yarn: YaRN ramp (beta 32/1, attention 0.1 ln s + 1); on a YaRN model (factor > 1) a new scale of
            its original window and base, the same config as YaRN from the unscaled model (other schemes do not
            compose with an existing scaling). llama3: Llama 3.1 scaling (low/high 1/4).
    `factor` defaults to target_len / the model's current window (the original one when YaRN re-scales).
    max_position_embeddings becomes target_len, except for dynamic NTK, whose growth starts at
    max_position_embeddings, so it keeps the original window.
    `attention_factor` (theta and yarn): the factor cos/sin are multiplied by, so attention logits scale by its
    square (YaRN's temperature; for yarn it replaces 0.1 ln s + 1). With theta it is written as transformers'
    yarn type with factor 1, whose frequencies are the plain ones at the new base: a sharper softmax over long
    inputs without any interpolation."""
    if scheme not in SCHEMES:
        raise InputError(f"unknown RoPE scheme {scheme!r}; choose one of {SCHEMES}", field="scheme")
    if target_len < 1:
        raise InputError(f"target length must be positive, got {target_len}", field="target_len")
    old = rope_parameters(config)
    old_base, window, dim = float(old["rope_theta"]), int(config.max_position_embeddings), head_dim(config)
    current = window
    rescale = scheme == "yarn" and _yarn_window(config) is not None
    if rescale:  # YaRN again (as the YaRN paper goes from s=16 to s=32): a new scale of the original window
        window = _yarn_window(config)
    if scheme != "theta" and old["rope_type"] != "default" and not rescale:
        raise InputError(f"the model already uses RoPE scaling {old['rope_type']!r}; schemes do not compose. "
                         "Use --scheme theta (keeps it and changes the base) or start from an unscaled model",
                         field="scheme")
    if factor is None:
        factor = target_len / window
    if factor <= 0 or (base is not None and base <= 0):
        raise InputError(f"factor and base must be positive, got factor={factor}, base={base}")
    if factor < 1 and scheme in ("pi", "yarn", "llama3"):
        raise InputError(f"{scheme} factor {factor:g} < 1 would shrink the window ({window} tokens"
                         + (", the model's original one" if rescale else "") + f" for a target of {target_len})",
                         field="factor")
    if attention_factor is not None:
        if attention_factor <= 0:
            raise InputError(f"must be positive, got {attention_factor}", field="attention_factor")
        if scheme not in ("theta", "yarn"):
            raise InputError(f"an attention factor goes with --scheme theta or yarn, not {scheme}",
                             field="attention_factor")
        if scheme == "theta" and old["rope_type"] not in ("default", "yarn"):
            raise InputError(f"the model uses RoPE scaling {old['rope_type']!r}, which has no attention factor",
                             field="attention_factor")
    new = dict(old)
    if scheme == "theta":
        new["rope_theta"] = float(base) if base is not None else recommended_base(target_len, dim, verbose)
        factor = None
        if attention_factor is not None and new["rope_type"] == "default":
            new.update(rope_type="yarn", factor=1.0, beta_fast=YARN_BETA_FAST, beta_slow=YARN_BETA_SLOW)
        if new["rope_type"] == "yarn" and new["factor"] == 1.0:  # only a temperature: it follows the window
            new["original_max_position_embeddings"] = int(target_len)
        if attention_factor is not None:
            new["attention_factor"] = float(attention_factor)
    elif scheme == "pi":
        new = {"rope_type": "linear", "rope_theta": old_base, "factor": float(factor)}
    elif scheme == "ntk" and dynamic:
        new = {"rope_type": "dynamic", "rope_theta": old_base, "factor": float(factor)}
    elif scheme == "ntk":
        new = {"rope_type": "default", "rope_theta": old_base * factor ** (dim / (dim - 2))}
    elif scheme == "yarn":
        # re-scaling keeps the model's own YaRN settings (ramp bounds, truncation, DeepSeek-style mscale)
        keep = {k: old[k] for k in ("beta_fast", "beta_slow", "truncate", "mscale", "mscale_all_dim")
                if rescale and k in old}
        new = {"rope_type": "yarn", "rope_theta": old_base, "factor": float(factor),
               "original_max_position_embeddings": window, "beta_fast": YARN_BETA_FAST,
               "beta_slow": YARN_BETA_SLOW, **keep}
        if attention_factor is not None:
            new["attention_factor"] = float(attention_factor)
        elif not {"mscale", "mscale_all_dim"} <= set(keep):  # with both, transformers derives it from them
            new["attention_factor"] = yarn_attention_factor(factor)
            was = old.get("attention_factor")
            if rescale and was is not None and abs(float(was) - yarn_attention_factor(float(old["factor"]))) > 1e-9:
                _log(f"rope: note: the model's attention factor {float(was):.4g} was not YaRN's default for its "
                     f"factor; the new one is the default for factor {factor:g} ({new['attention_factor']:.4g}); "
                     "--attention-factor sets another")
    elif scheme == "llama3":
        new = {"rope_type": "llama3", "rope_theta": old_base, "factor": float(factor),
               "original_max_position_embeddings": window, "low_freq_factor": LLAMA3_LOW_FREQ_FACTOR,
               "high_freq_factor": LLAMA3_HIGH_FREQ_FACTOR}
    if "partial_rotary_factor" in old:
        new["partial_rotary_factor"] = old["partial_rotary_factor"]
    _set_rope_parameters(config, new)
    config.max_position_embeddings = window if (scheme == "ntk" and dynamic) else int(target_len)
    summary = {"scheme": scheme + ("-dynamic" if scheme == "ntk" and dynamic else ""), "target_len": int(target_len),
               "original_len": window, "head_dim": dim, "old_base": old_base, "new_base": float(new["rope_theta"]),
               "factor": factor, "attention_scaling": attention_scaling(config),
               "rope_parameters": rope_parameters(config),
               "max_position_embeddings": config.max_position_embeddings,
               "bound_reach": bound_reach(config, int(target_len))}
    if verbose:
        _log(f"rope: {summary['scheme']}: {old['rope_type']} base {old_base:.4g} window {current}"
             + (f" (original {window})" if rescale else "") + " -> "
             f"{new['rope_type']} base {new['rope_theta']:.4g} window {target_len}"
             + (f" factor {factor:.4g}" if factor else "")
             + (f" attention factor {summary['attention_scaling']:.4g}" if summary["attention_scaling"] != 1
                else ""))
        if summary["bound_reach"] is not None:
            _log(f"rope: warning: these frequencies fail the Men et al. condition (B_m >= 0) from position "
                 f"{summary['bound_reach']}, before {target_len}: expect retrieval to weaken beyond it even where "
                 "perplexity stays low (a theta base of at least "
                 f"{base_lower_bound(int(target_len), dim):.3g} passes)")
    return summary


def _yarn_window(config) -> int | None:
    """The original window of a YaRN-scaled model (factor > 1), which YaRN re-scales from; None otherwise."""
    p = rope_parameters(config)
    if p["rope_type"] != "yarn" or float(p.get("factor", 1.0)) <= 1.0:
        return None
    return int(p.get("original_max_position_embeddings") or config.max_position_embeddings)


def plan(config, target_len: int, factors: list[float] | None = None) -> list[dict[str, Any]]:
    """Each candidate RoPE for `target_len` from `config` (left unchanged), before any training: the
    `longreach extend` flags, where its frequencies first fail the Men et al. condition (bound_reach; None:
    never before target_len), how many of the model's frequencies it leaves as they are, and the most it slows
    one. Candidates: theta at the recommended base, PI, static NTK, YaRN and Llama 3.1 at each factor (default:
    target / window, x1.5 and x2 of it). docs/RESULTS.md session 9: failing the condition marked where NIAH
    fell; moving more frequencies cost more long-range perplexity."""
    base_factor = target_len / (_yarn_window(config) or int(config.max_position_embeddings))
    factors = sorted(set(factors or [base_factor, 1.5 * base_factor, 2 * base_factor]))
    before = inv_freq(config, seq_len=target_len).double()
    recommended = recommended_base(int(target_len), head_dim(config), verbose=False)
    candidates = [("theta", {"base": recommended}), ("pi", {}), ("ntk", {})]
    candidates += [(scheme, {"factor": f}) for scheme in ("yarn", "llama3") for f in factors]
    rows = []
    for scheme, kw in candidates:
        flags = f"--scheme {scheme}" + "".join(f" --{k} {v:.4g}" for k, v in kw.items())
        trial = copy.deepcopy(config)
        try:
            summary = apply_scheme(trial, scheme, int(target_len), verbose=False, **kw)
        except InputError as e:
            rows.append({"flags": flags, "error": str(e)})
            continue
        after = inv_freq(trial, seq_len=target_len).double()
        slow = before / after
        rows.append({"flags": flags, "bound_reach": summary["bound_reach"],
                     "unchanged": int(((slow - 1).abs() < 1e-6).sum()), "frequencies": int(slow.numel()),
                     "max_slowdown": float(slow.max()), "attention_scaling": summary["attention_scaling"]})
    return rows


def refresh_rotary(model) -> None:
    """Rebuild the model's rotary embedding module(s) from its (changed) config, on the same device.

    transformers computes inv_freq once, when the model is built; after `apply_scheme` on a loaded model this
    makes the in-memory model use the new RoPE too (the saved checkpoint needs nothing: inv_freq is not saved)."""
    for name, module in list(model.named_modules()):
        if hasattr(module, "inv_freq") and hasattr(module, "attention_scaling"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            fresh = type(module)(config=module.config).to(module.inv_freq.device)
            setattr(parent, name.rsplit(".", 1)[-1], fresh)
    check_rotary(model)


def extend_model(model, scheme: str, target_len: int, **kwargs) -> dict[str, Any]:
    """`apply_scheme` on a loaded model's config, then rebuild and check its rotary embedding."""
    summary = apply_scheme(model.config, scheme, target_len, **kwargs)
    refresh_rotary(model)
    return summary
