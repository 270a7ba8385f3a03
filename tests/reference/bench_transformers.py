#!/usr/bin/env python3
"""The Hugging Face transformers (+ PEFT) side of `tiqu bench generate` / `tiqu bench train`: the same
shapes on random weights, float32, CPU, for BENCHMARKS.md. Figures, not tests.

    python3 tests/reference/bench_transformers.py generate --config qwen3-0.6b --batch 1 --prompt-len 128 \
        --new-tokens 32 --threads 8 --json
    python3 tests/reference/bench_transformers.py train --config qwen3-0.6b --batch 4 --seq 512 --steps 5 \
        --threads 8 --json

(`generate` is also the default when no subcommand is given.) `--config` is a preset (qwen3-0.6b,
qwen3-1.7b, qwen3-4b: the shapes of `Qwen3Config::preset` in core/src/config.rs) or a config.json path
(or a folder holding one). Nothing is downloaded.

generate -- mirrors native/src/bench.rs: one warm-up forward of 8 tokens per row; prefill = one forward
over the [B, P] prompt batch with a KV cache, logits of the last position only (`logits_to_keep=1`), plus
the argmax; decode = T-1 single-token steps with the cache, greedy argmax each step (the first of the T
new tokens comes from the prefill). prefill_tokens_per_s = B*P / prefill_s, decode_tokens_per_s =
B*(T-1) / decode_s.

train -- random-weight model + PEFT LoRA (r 8, alpha 32, dropout 0.1, q/k/v/o/gate/up/down), gradient
checkpointing on, torch.optim.AdamW(lr 1e-4) over the LoRA params; every row is L random tokens, the
first half is the prompt (labels -100) and the second half the response; loss = transformers' mean NLL
over the response tokens. One warm-up step, then --steps timed steps (forward + backward + optimizer
step + zero_grad). tokens_per_s = B*L / mean step_s.

Output: one JSON line (--json) or indented JSON. peak_rss_mb = getrusage(RUSAGE_SELF).ru_maxrss (the
process high-water mark, model construction included).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)

PRESETS = {
    # name: (hidden, intermediate, layers, heads, kv_heads, tied) -- as Qwen3Config::preset in core/src/config.rs
    "qwen3-0.6b": (1024, 3072, 28, 16, 8, True),
    "qwen3-1.7b": (2048, 6144, 28, 16, 8, True),
    "qwen3-4b": (2560, 9728, 36, 32, 8, True),
}

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_config(spec):
    if spec in PRESETS:
        hidden, inter, layers, heads, kv, tied = PRESETS[spec]
        return Qwen3Config(
            vocab_size=151936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=tied, hidden_act="silu", attention_bias=False, attention_dropout=0.0,
            use_sliding_window=False, sliding_window=None, max_window_layers=layers,
            bos_token_id=151643, eos_token_id=151645, initializer_range=0.02,
        )
    p = Path(spec)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise SystemExit(f"--config {spec}: not a preset ({', '.join(PRESETS)}) nor a config.json")
    with open(p, encoding="utf-8") as f:
        d = json.load(f)
    return Qwen3Config.from_dict(d)


def build_model(cfg, attn, seed):
    torch.manual_seed(seed)
    cfg._attn_implementation = attn
    t0 = time.perf_counter()
    model = Qwen3ForCausalLM(cfg).to(torch.float32)  # transformers' own random init (N(0, 0.02))
    return model, time.perf_counter() - t0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def common_fields(args, cfg):
    return {
        "impl": "transformers",
        "device": "cpu",
        "dtype": "float32",
        "attn_implementation": args.attn,
        "config": args.config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def emit(args, out):
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


@torch.inference_mode()
def cmd_generate(args):
    if args.batch < 1 or args.prompt_len < 1 or args.new_tokens < 1:
        raise SystemExit("--batch, --prompt-len and --new-tokens must be at least 1")
    cfg = load_config(args.config)
    model, load_s = build_model(cfg, args.attn, 42)
    model.eval()
    b, p, t = args.batch, args.prompt_len, args.new_tokens
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (b, p), generator=g)

    # warm-up (allocator, thread pool, lazy inits)
    warm = torch.ones((b, 8), dtype=torch.long)
    model(input_ids=warm, use_cache=True, logits_to_keep=1).logits.argmax(-1)

    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1, :].argmax(-1)
    cache = out.past_key_values
    prefill_s = time.perf_counter() - t0

    step_s = []
    t0 = time.perf_counter()
    for _ in range(t - 1):
        s0 = time.perf_counter()
        out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = out.logits[:, -1, :].argmax(-1)
        step_s.append(time.perf_counter() - s0)
    decode_s = time.perf_counter() - t0
    decode_tokens = b * (t - 1)

    res = common_fields(args, cfg)
    res.update({
        "bench": "generate",
        "num_parameters_M": sum(x.numel() for x in model.parameters()) / 1e6,
        "batch": b,
        "prompt_len": p,
        "new_tokens": t,
        "load_s": load_s,
        "prefill_s": prefill_s,
        "prefill_tokens_per_s": b * p / prefill_s,
        "decode_s": decode_s,
        "decode_step_s_median": sorted(step_s)[len(step_s) // 2] if step_s else None,
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    })
    emit(args, res)


def cmd_train(args):
    from peft import LoraConfig, TaskType, get_peft_model
    import peft

    if args.batch < 1 or args.seq < 2 or args.steps < 1:
        raise SystemExit("--batch and --steps must be at least 1, --seq at least 2")
    cfg = load_config(args.config)
    cfg.use_cache = False
    model, load_s = build_model(cfg, args.attn, 42)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    lcfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGETS, bias="none",
                      task_type=TaskType.CAUSAL_LM)
    model = get_peft_model(model, lcfg)
    model.train()
    params = [x for x in model.parameters() if x.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    b, L = args.batch, args.seq
    half = L // 2
    g = torch.Generator().manual_seed(7)

    def batch():
        ids = torch.randint(0, cfg.vocab_size, (b, L), generator=g)
        labels = ids.clone()
        labels[:, :half] = -100
        return ids, labels

    def step(ids, labels):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    batches = [batch() for _ in range(args.steps + 1)]
    step(*batches[0])  # warm-up
    times, losses = [], []
    for ids, labels in batches[1:]:
        t0 = time.perf_counter()
        losses.append(step(ids, labels))
        times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)

    res = common_fields(args, cfg)
    res.update({
        "bench": "train",
        "peft": peft.__version__,
        "num_parameters_M": sum(x.numel() for x in model.parameters()) / 1e6,
        "trainable_parameters": sum(x.numel() for x in params),
        "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "targets": LORA_TARGETS},
        "gradient_checkpointing": True,
        "batch": b,
        "seq": L,
        "steps": args.steps,
        "load_s": load_s,
        "step_s": step_s,
        "step_s_all": times,
        "tokens_per_s": b * L / step_s,
        "losses": losses,
        "peak_rss_mb": peak_rss_mb(),
    })
    emit(args, res)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--config", required=True, help="preset (%s) or config.json path" % ", ".join(PRESETS))
        sp.add_argument("--batch", type=int, default=1)
        sp.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
        sp.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
        sp.add_argument("--json", action="store_true", help="one JSON line")

    g = sub.add_parser("generate", help="prefill / decode throughput")
    common(g)
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--new-tokens", type=int, default=32)
    t = sub.add_parser("train", help="LoRA training step throughput")
    common(t)
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--steps", type=int, default=5)

    if argv and argv[0] not in ("generate", "train", "-h", "--help"):
        argv = ["generate"] + argv
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"generate": cmd_generate, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
