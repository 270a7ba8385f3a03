#!/usr/bin/env python3
"""Check what tiqu writes (a LoRA adapter from `tiqu train`, a merged checkpoint from `tiqu merge`) against
Hugging Face transformers + PEFT.

    python3 tests/reference/check_tiqu_outputs.py --base tests/fixtures/tiny-untied --adapter RUN_DIR \
        --merged MERGED_DIR --data tests/fixtures/sft_small.jsonl --expect-loss LOSS [--tol 1e-4]

LOSS is the loss tiqu itself reported for base + adapter (`tiqu eval --adapter RUN_DIR --loss-only --json`,
the "loss" of the last stdout line). Checks, one printed line each:

  adapter  PeftModel.from_pretrained(base, adapter) loads tiqu's adapter_config.json and
           adapter_model.safetensors (every tensor in the file must land on a PEFT lora parameter, bit-exactly,
           and every PEFT lora parameter must come from the file), and its eval loss is within --tol
           (relative) of LOSS.
  merged   AutoModelForCausalLM.from_pretrained(merged, float32) loads with no missing / unexpected keys and
           no lora tensors, and:
           - merged weights stored in float32: its eval loss is within --tol of LOSS;
           - merged weights stored in a 16-bit type (tiqu keeps a bf16 base's dtype): the reference is PEFT's
             merge_and_unload() done in float32 and then rounded to that dtype, i.e. what an exact merge
             followed by the cast must give. The merged loss must be within --tol of that reference's loss,
             and every merged tensor within --max-ulp units in the last place of it. The gap between the
             merged loss and LOSS (the unrounded adapter) is printed; it is bf16 rounding of W + s*B*A, not
             a tiqu error, and is asserted only if --merged-vs-adapter-tol is given.
  weights  every tensor of the merged folder against PEFT's merge (float32: allclose with rtol 1e-5 and
           atol 1e-6 * max|W|; 16-bit: the ULP bound above).

Eval-loss convention (make_fixtures.py / make_peft_fixtures.py): each record alone, unpadded, float32 model,
eager attention; prompt = chat template of [system?, instruction + input] with the generation prompt on and
thinking off; response = tokenizer(output + "<|im_end|>"); NLL of the response tokens (shifted causal LM)
summed in float64 from the float32 logits; loss = sum NLL / sum response tokens over all records.

Exit status: 0 all checks pass (or --skip-if-missing and the Python tools are absent), 1 a check failed,
2 something could not be loaded. Nothing is downloaded.
"""

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EOS_ID = 151645  # <|im_end|>
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENIZER = ROOT / "assets" / "qwen3-tokenizer"


class LoadError(Exception):
    pass


class CheckFailed(Exception):
    pass


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="base checkpoint folder (the one tiqu trained / merged on)")
    p.add_argument("--adapter", required=True, help="adapter folder written by tiqu (adapter_config.json + "
                                                     "adapter_model.safetensors)")
    p.add_argument("--merged", required=True, help="folder written by `tiqu merge`")
    p.add_argument("--data", required=True, help="SFT records {system?, instruction, input?, output}: JSONL or "
                                                  "a JSON array")
    p.add_argument("--expect-loss", required=True, type=float, help="the eval loss tiqu reported for "
                                                                     "base + adapter")
    p.add_argument("--tol", type=float, default=1e-4, help="relative tolerance of the loss checks "
                                                           "(default 1e-4)")
    p.add_argument("--max-ulp", type=int, default=1,
                   help="16-bit merged weights: largest allowed distance, in units in the last place, from "
                        "PEFT's float32 merge rounded to that dtype (default 1: the float32 W + s*B*A may "
                        "differ in its last bits with the summation order and round the other way)")
    p.add_argument("--merged-vs-adapter-tol", type=float, default=None,
                   help="16-bit merged weights: also assert |merged loss - expect-loss| / expect-loss <= this "
                        "(default: only printed)")
    p.add_argument("--tokenizer", default=None,
                   help="folder with tokenizer.json + tokenizer_config.json (default: --base if it has "
                        "tokenizer.json, else assets/qwen3-tokenizer)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--skip-if-missing", action="store_true",
                   help="exit 0 with 'skipped: ...' if torch / transformers / peft cannot be imported")
    return p.parse_args()


def import_tools(skip_if_missing):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import peft  # noqa: F401
        import safetensors  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising something else
        if skip_if_missing:
            print("skipped: python reference tools not installed")
            sys.exit(0)
        print(f"error: cannot import the python reference tools (torch, transformers, peft, safetensors): {e}",
              file=sys.stderr)
        sys.exit(2)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)


# ----------------------------------------------------------------------------------------------
# data / tokenization (the contract of make_fixtures.py)


def load_records(path):
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        recs = json.loads(text)
    else:
        recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not recs:
        raise LoadError(f"{path}: no records")
    return recs


def tokenize_record(tok, r):
    msgs = []
    if r.get("system") is not None:
        msgs.append({"role": "system", "content": r["system"]})
    msgs.append({"role": "user", "content": r["instruction"] + (r.get("input") or "")})
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    prompt_ids = list(tok(text)["input_ids"])
    resp_ids = list(tok(r["output"] + "<|im_end|>")["input_ids"])
    assert resp_ids[-1] == EOS_ID, resp_ids[-5:]
    return prompt_ids + resp_ids, [-100] * len(prompt_ids) + resp_ids


def eval_loss(model, examples):
    import torch

    model.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            lp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
            y = torch.tensor(labels[1:])
            m = y != -100
            nll += -float(lp[:-1][m].gather(-1, y[m].unsqueeze(-1)).sum())
            n += int(m.sum())
    return nll / n, n


# ----------------------------------------------------------------------------------------------
# loading


def load_causal_lm(path, what):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    except Exception as e:
        raise LoadError(f"{what} {path}: AutoModelForCausalLM.from_pretrained failed: {type(e).__name__}: {e}")
    bad = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
           if info.get(k)}
    if bad:
        raise LoadError(f"{what} {path}: loading info not clean: {bad}")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise LoadError(f"{what} {path}: not all parameters are float32 after loading")
    return model


def read_safetensors_dir(path):
    """All tensors of *.safetensors in a folder (as stored), plus their dtypes."""
    from safetensors import safe_open

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path}: no *.safetensors")
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                if k in out:
                    raise LoadError(f"{path}: tensor {k} is in more than one file")
                out[k] = h.get_tensor(k)
    return out


def load_peft(base_model, adapter_dir):
    """PeftModel.from_pretrained + a strict check that the file's tensors are the model's lora parameters."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = PeftModel.from_pretrained(base_model, str(adapter_dir))
        except Exception as e:
            raise LoadError(f"adapter {adapter_dir}: PeftModel.from_pretrained refused it: "
                            f"{type(e).__name__}: {e}")
    for w in caught:
        msg = str(w.message)
        if issubclass(w.category, (FutureWarning, DeprecationWarning)):
            continue  # library deprecation noise (e.g. transformers' is_gradient_checkpointing)
        if "missing adapter keys" in msg.lower() or "unexpected" in msg.lower():
            raise LoadError(f"adapter {adapter_dir}: PEFT warned while loading: {msg}")
        print(f"  note: PEFT warning while loading the adapter: {w.category.__name__}: {msg.splitlines()[0]}")

    saved = read_safetensors_dir(adapter_dir)
    params = {n: p for n, p in model.named_parameters() if ".lora_" in n}

    def param_name(key):  # file key -> PEFT parameter name (adapter "default")
        return key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight",
                                                                                ".lora_B.default.weight")

    expected = {param_name(k) for k in saved}
    problems = []
    for k, t in saved.items():
        name = param_name(k)
        if name not in params:
            problems.append(f"file tensor {k} has no PEFT parameter {name}")
            continue
        p = params[name].detach()
        if tuple(p.shape) != tuple(t.shape):
            problems.append(f"{k}: file shape {tuple(t.shape)} != PEFT parameter shape {tuple(p.shape)}")
        elif not bool((p.to(t.dtype) == t).all()) or not bool((t.to(p.dtype) == p).all()):
            problems.append(f"{k}: PEFT parameter differs from the file")
    for n in params:
        if n not in expected:
            problems.append(f"PEFT parameter {n} was not in the file (left at its init)")
    if problems:
        raise LoadError(f"adapter {adapter_dir}: tensors did not load one-to-one:\n    " + "\n    ".join(problems))
    cfg = model.peft_config["default"]
    scaling = cfg.lora_alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
    print(f"  adapter config as PEFT read it: r {cfg.r}, lora_alpha {cfg.lora_alpha}, rslora {cfg.use_rslora}, "
          f"scaling {scaling:g}, targets {sorted(cfg.target_modules)}, {len(saved)} tensors "
          f"({', '.join(sorted({str(t.dtype).replace('torch.', '') for t in saved.values()}))})")
    return model


# ----------------------------------------------------------------------------------------------
# weight comparison


def ordered_bits(t):
    """Map floats to integers whose difference is the distance in units in the last place."""
    import torch

    int_t = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[t.dtype]
    mask = {torch.int16: 0x7FFF, torch.int32: 0x7FFFFFFF}[int_t]
    i = t.contiguous().view(int_t).to(torch.int64)
    return torch.where(i < 0, -(i & mask), i)


def compare_weights(merged_sd, ref_sd, stored_dtype, tied, max_ulp):
    """merged_sd: tiqu's tensors as stored; ref_sd: PEFT's merged float32 state dict. -> (ok, summary, problems)"""
    import torch

    problems = []
    ref_keys = set(ref_sd)
    if tied:
        ref_keys.discard("lm_head.weight")  # tied checkpoints do not store it
    if "lm_head.weight" in merged_sd and tied:
        ref_keys.add("lm_head.weight")
    missing = sorted(ref_keys - set(merged_sd))
    extra = sorted(set(merged_sd) - set(ref_sd))
    if missing:
        problems.append(f"missing tensors: {missing}")
    if extra:
        problems.append(f"unexpected tensors: {extra}")
    worst_ulp, worst_rel, n_diff, n_tot = 0, 0.0, 0, 0
    for k in sorted(ref_keys & set(merged_sd)):
        m, r = merged_sd[k], ref_sd[k].detach()
        if m.dtype != stored_dtype:
            problems.append(f"{k}: stored as {m.dtype}, the rest as {stored_dtype}")
            continue
        if tuple(m.shape) != tuple(r.shape):
            problems.append(f"{k}: shape {tuple(m.shape)} != {tuple(r.shape)}")
            continue
        rr = r.to(stored_dtype)
        ulp = int((ordered_bits(m) - ordered_bits(rr)).abs().max())
        worst_ulp = max(worst_ulp, ulp)
        n_diff += int((m != rr).sum())
        n_tot += m.numel()
        scale = float(r.abs().max()) or 1.0
        worst_rel = max(worst_rel, float((m.float() - r).abs().max()) / scale)
        if stored_dtype == torch.float32:
            if not torch.allclose(m, r, rtol=1e-5, atol=1e-6 * scale):
                problems.append(f"{k}: max |diff| {float((m - r).abs().max()):.3e} (max |W| {scale:.3e})")
        elif ulp > max_ulp:
            problems.append(f"{k}: {ulp} ulp from PEFT's merge rounded to {stored_dtype}")
    short = str(stored_dtype).replace("torch.", "")
    if stored_dtype == torch.float32:
        summary = (f"{n_tot} values, {n_diff} differ from PEFT's float32 merge, max {worst_ulp} ulp, "
                   f"max |diff| / max|W| {worst_rel:.2e} per tensor")
    else:
        summary = (f"{n_tot} values, {n_diff} differ from PEFT's float32 merge rounded to {short}, "
                   f"max {worst_ulp} ulp (informative: max |merged - unrounded f32 merge| / max|W| "
                   f"{worst_rel:.2e} per tensor)")
    return not problems, summary, problems


# ----------------------------------------------------------------------------------------------


def main():
    args = parse_args()
    import_tools(args.skip_if_missing)

    import torch
    import peft
    import transformers
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)

    failures = []

    def check(name, ok, line):
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {line}")
        if not ok:
            failures.append(name)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    try:
        for what, d in (("base", args.base), ("adapter", args.adapter), ("merged", args.merged)):
            if not Path(d).is_dir():
                raise LoadError(f"{what}: {d} is not a folder")
        tok_dir = args.tokenizer or (args.base if (Path(args.base) / "tokenizer.json").exists()
                                     else str(DEFAULT_TOKENIZER))
        try:
            tok = AutoTokenizer.from_pretrained(str(tok_dir))
        except Exception as e:
            raise LoadError(f"tokenizer {tok_dir}: {type(e).__name__}: {e}")
        examples = [tokenize_record(tok, r) for r in load_records(args.data)]

        # 1. base + adapter through PEFT
        base = load_causal_lm(args.base, "base")
        tied = bool(base.config.tie_word_embeddings)
        base_loss, ntok = eval_loss(base, examples)
        print(f"  base alone: loss {base_loss:.6f} over {ntok} response tokens in {len(examples)} records "
              f"(informative)")
        model = load_peft(base, args.adapter)
        ad_loss, _ = eval_loss(model, examples)
        r1 = rel(ad_loss, args.expect_loss)
        check("adapter", r1 <= args.tol,
              f"PEFT base+adapter loss {ad_loss:.6f}, tiqu {args.expect_loss:.6f}, rel diff {r1:.2e} "
              f"(tol {args.tol:g})")
        if abs(ad_loss - base_loss) <= 1e-6 * abs(base_loss):
            print("  note: the adapter does not change the loss (B == 0?)")

        # PEFT's own merge, float32 (the reference for the merged folder)
        ref_model = model.merge_and_unload()
        ref_sd = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
        del model, ref_model, base

        # 2. the merged folder
        merged_sd = read_safetensors_dir(args.merged)
        if any("lora" in k for k in merged_sd):
            raise LoadError(f"merged {args.merged}: still has lora tensors: "
                            f"{sorted(k for k in merged_sd if 'lora' in k)[:4]}")
        dtypes = {t.dtype for t in merged_sd.values()}
        if len(dtypes) != 1:
            raise LoadError(f"merged {args.merged}: mixed dtypes {sorted(map(str, dtypes))}")
        stored = dtypes.pop()
        merged = load_causal_lm(args.merged, "merged")
        m_loss, _ = eval_loss(merged, examples)
        del merged
        r2 = rel(m_loss, args.expect_loss)
        if stored == torch.float32:
            check("merged", r2 <= args.tol,
                  f"merged (float32) loss {m_loss:.6f}, tiqu {args.expect_loss:.6f}, rel diff {r2:.2e} "
                  f"(tol {args.tol:g})")
        else:
            short = str(stored).replace("torch.", "")
            # what an exact float32 merge followed by the cast to the stored dtype gives
            rounded = load_causal_lm(args.base, "base")
            with torch.no_grad():
                sd = rounded.state_dict()
                for k, v in sd.items():
                    v.copy_(ref_sd[k].to(stored).to(torch.float32))
            rd_loss, _ = eval_loss(rounded, examples)
            del rounded
            r3 = rel(m_loss, rd_loss)
            check("merged", r3 <= args.tol,
                  f"merged ({short}) loss {m_loss:.6f}, PEFT f32 merge rounded to {short} {rd_loss:.6f}, "
                  f"rel diff {r3:.2e} (tol {args.tol:g})")
            line = (f"merged ({short}) loss {m_loss:.6f} vs tiqu base+adapter {args.expect_loss:.6f}: rel diff "
                    f"{r2:.2e}; PEFT's merge rounded to {short} is off by {rel(rd_loss, args.expect_loss):.2e} "
                    f"({short} rounding of the merged weights)")
            if args.merged_vs_adapter_tol is not None:
                check("merged-vs-adapter", r2 <= args.merged_vs_adapter_tol,
                      line + f" (tol {args.merged_vs_adapter_tol:g})")
            else:
                print(f"info merged-vs-adapter: {line}")

        ok, summary, problems = compare_weights(merged_sd, ref_sd, stored, tied, args.max_ulp)
        check("weights", ok, summary + ("" if stored == torch.float32 else f" (max allowed {args.max_ulp} ulp)"))
        for p in problems[:20]:
            print(f"    {p}")
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    if failures:
        print(f"error: {len(failures)} check(s) failed: {', '.join(failures)}", file=sys.stderr)
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
