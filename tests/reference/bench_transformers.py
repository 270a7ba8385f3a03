#!/usr/bin/env python3
"""The Hugging Face transformers (+ PEFT) side of `tiqu bench generate` / `tiqu bench train` /
`tiqu bench extract`: the same shapes on random weights, for BENCHMARKS.md. Figures, not tests. Float32 on
the CPU by default; `--device cuda --dtype bfloat16` for the GPU (scripts/gpu-bench).

    python3 tests/reference/bench_transformers.py generate --config qwen3-0.6b --batch 1 --prompt-len 128 \
        --new-tokens 32 --threads 8 --json
    python3 tests/reference/bench_transformers.py train --config qwen3-0.6b --batch 4 --seq 512 --steps 5 \
        --threads 8 --json

    python3 tests/reference/bench_transformers.py extract --config qwen3-0.6b --batch 32 --records 64 \
        --max-new-tokens 32 --device cuda --dtype bfloat16 --json

(`generate` is also the default when no subcommand is given.) `--config` is a preset (qwen3-0.6b,
qwen3-1.7b, qwen3-4b: the shapes of `Qwen3Config::preset` in core/src/config.rs) or a config.json path
(or a folder holding one). Nothing is downloaded.

generate -- mirrors native/src/bench.rs: one warm-up forward of 8 tokens per row; prefill = one forward
over the [B, P] prompt batch with a KV cache, logits of the last position only (`logits_to_keep=1`), plus
the argmax; decode = T-1 single-token steps with the cache, greedy argmax each step (the first of the T
new tokens comes from the prefill). prefill_tokens_per_s = B*P / prefill_s, decode_tokens_per_s =
B*(T-1) / decode_s.

train -- random-weight model + PEFT LoRA (r 8, alpha 32, dropout 0.1, q/k/v/o/gate/up/down), gradient
checkpointing on (--gradient-checkpointing false: off), torch.optim.AdamW(lr 1e-4) over the LoRA params; every row is L random tokens, the
first half is the prompt (labels -100) and the second half the response; loss = transformers' mean NLL
over the response tokens. One warm-up step, then --steps timed steps (forward + backward + optimizer
step + zero_grad). tokens_per_s = B*L / mean step_s.

extract -- mirrors native/src/bench.rs `bench_extract` (constrained decoding aside): record i is
f"{i} " + the seed complaint cycled from character i % 7 to --text-chars characters; its prompt is the
Qwen3 chat template with thinking disabled (core/src/chat.rs), system = the default schema's prompt
(core/src/schema.rs), tokenised with the real Qwen3 tokenizer (--tokenizer). --records records (default
one batch) in chunks of --batch, each chunk one greedy `model.generate` call with left padding and
min_new_tokens = max_new_tokens = --max-new-tokens, so every record gets exactly that many new tokens
(random weights rarely close the JSON, so tiqu's lengths are fixed the same way). One warm-up call on the
first chunk, then all records timed. records_per_s = records / seconds, tokens_per_s = new tokens /
seconds, prompt_tokens = mean prompt length (unpadded).

--device cpu|cuda, --dtype float32|bfloat16|float16: the model is built in float32 on the CPU (the same
random init whatever the device), then cast and moved. train with a 16-bit dtype: base weights in that
dtype, LoRA weights kept in float32 (PEFT's autocast_adapter_dtype, checked: lora_dtype in the output),
forward under torch.autocast in that dtype (what transformers' Trainer does with bf16=True); on cuda the
optimizer is the fused AdamW (Trainer's default there). On cuda every timing is bracketed by
torch.cuda.synchronize().

Output: one JSON line (--json) or indented JSON. peak_rss_mb = getrusage(RUSAGE_SELF).ru_maxrss (the
process high-water mark, model construction included); peak_device_mb = torch.cuda.max_memory_allocated()
/ 2**20 over the whole run (null on the CPU), peak_device_reserved_mb the same for the caching allocator's
reserved memory.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import itertools
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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# As core/src/extract.rs / native/src/bench.rs: the seed's example complaint and the default schema's prompt.
SEED_TEXT = "龙琳，宁夏回族自治区璐市城东林街g座 955491，邮箱 nafan@example.com。小区垃圾堆积成山，物业不管，臭气熏天！！"
SCHEMA_FIELDS = ["name", "address", "email", "question"]


def system_prompt(fields=SCHEMA_FIELDS):
    names = "、".join(fields)  # Schema::system_prompt in core/src/schema.rs (no descriptions)
    return f"将文本中的{names}提取出来，以json格式输出，字段为{names}，值为文本中提取出来的内容。"


def chat_prompt(system, user):
    """core/src/chat.rs `chat_prompt`: Qwen3's template, generation prompt, thinking disabled."""
    out = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return out + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def bench_text(i, chars):
    """native/src/bench.rs: format!("{i} {}", seed.chars().cycle().skip(i % 7).take(text_chars))."""
    return f"{i} " + "".join(itertools.islice(itertools.cycle(SEED_TEXT), i % 7, i % 7 + chars))


def device_of(args):
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is false (no CUDA GPU or a CPU-only torch)")
    return torch.device(args.device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(cfg, attn, seed, dtype=torch.float32, device=None):
    """transformers' own random init (N(0, 0.02)) in float32 on the CPU, then cast and moved: the same
    weights whatever the device and dtype, and no float32 copy on the device."""
    torch.manual_seed(seed)
    cfg._attn_implementation = attn
    t0 = time.perf_counter()
    model = Qwen3ForCausalLM(cfg).to(torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
    if device is not None and device.type != "cpu":
        model = model.to(device)
        sync(device)
    return model, time.perf_counter() - t0


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def peak_device(device):
    if device.type != "cuda":
        return {"peak_device_mb": None, "peak_device_reserved_mb": None}
    return {
        "peak_device_mb": torch.cuda.max_memory_allocated(device) / 2**20,
        "peak_device_reserved_mb": torch.cuda.max_memory_reserved(device) / 2**20,
    }


def common_fields(args, cfg):
    out = {
        "impl": "transformers",
        "device": args.device,
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "config": args.config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def emit(args, out):
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


@torch.inference_mode()
def cmd_generate(args):
    if args.batch < 1 or args.prompt_len < 1 or args.new_tokens < 1:
        raise SystemExit("--batch, --prompt-len and --new-tokens must be at least 1")
    dev = device_of(args)
    cfg = load_config(args.config)
    model, load_s = build_model(cfg, args.attn, 42, DTYPES[args.dtype], dev)
    model.eval()
    b, p, t = args.batch, args.prompt_len, args.new_tokens
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (b, p), generator=g).to(dev)

    # warm-up (allocator, thread pool, lazy inits)
    warm = torch.ones((b, 8), dtype=torch.long, device=dev)
    model(input_ids=warm, use_cache=True, logits_to_keep=1).logits.argmax(-1)
    sync(dev)

    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1, :].argmax(-1)
    cache = out.past_key_values
    sync(dev)
    prefill_s = time.perf_counter() - t0

    step_s = []
    t0 = time.perf_counter()
    for _ in range(t - 1):
        s0 = time.perf_counter()
        out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = out.logits[:, -1, :].argmax(-1)
        sync(dev)
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
    res.update(peak_device(dev))
    emit(args, res)


def cmd_train(args):
    from peft import LoraConfig, TaskType, get_peft_model
    import peft

    if args.batch < 1 or args.seq < 2 or args.steps < 1:
        raise SystemExit("--batch and --steps must be at least 1, --seq at least 2")
    dev = device_of(args)
    dtype = DTYPES[args.dtype]
    cfg = load_config(args.config)
    cfg.use_cache = False
    model, load_s = build_model(cfg, args.attn, 42, dtype, dev)
    checkpointing = args.gradient_checkpointing == "true"
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lcfg = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1, target_modules=LORA_TARGETS, bias="none",
                      task_type=TaskType.CAUSAL_LM)
    # autocast_adapter_dtype=True (PEFT's default, spelled out): bf16/f16 LoRA weights are made float32.
    model = get_peft_model(model, lcfg, autocast_adapter_dtype=True)
    model.train()
    params = [x for x in model.parameters() if x.requires_grad]
    lora_dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in params})
    if dtype != torch.float32 and lora_dtypes != ["float32"]:
        raise SystemExit(f"LoRA parameters are {lora_dtypes}, expected float32 over a {args.dtype} base")
    if dev.type == "cuda":
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    use_autocast = dtype != torch.float32

    b, L = args.batch, args.seq
    half = L // 2
    g = torch.Generator().manual_seed(7)

    def batch():
        ids = torch.randint(0, cfg.vocab_size, (b, L), generator=g)
        labels = ids.clone()
        labels[:, :half] = -100
        return ids.to(dev), labels.to(dev)

    def step(ids, labels):
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=use_autocast):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    batches = [batch() for _ in range(args.steps + 1)]
    step(*batches[0])  # warm-up
    times, losses = [], []
    for ids, labels in batches[1:]:
        sync(dev)
        t0 = time.perf_counter()
        losses.append(step(ids, labels))
        sync(dev)
        times.append(time.perf_counter() - t0)
    step_s = sum(times) / len(times)

    res = common_fields(args, cfg)
    res.update({
        "bench": "train",
        "peft": peft.__version__,
        "num_parameters_M": sum(x.numel() for x in model.parameters()) / 1e6,
        "trainable_parameters": sum(x.numel() for x in params),
        "lora": {"r": 8, "alpha": 32, "dropout": 0.1, "targets": LORA_TARGETS},
        "gradient_checkpointing": checkpointing,
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
    if dev.type != "cpu" or dtype != torch.float32:
        res.update({"lora_dtype": lora_dtypes[0] if len(lora_dtypes) == 1 else lora_dtypes,
                    "autocast": use_autocast, "optimizer": "AdamW (fused)" if dev.type == "cuda" else "AdamW"})
    res.update(peak_device(dev))
    emit(args, res)


def load_tokenizer(folder):
    from transformers import AutoTokenizer

    d = Path(folder)
    if not (d / "tokenizer.json").is_file():
        raise SystemExit(f"--tokenizer {folder}: no tokenizer.json there (the Qwen3 tokenizer folder)")
    tok = AutoTokenizer.from_pretrained(str(d))
    tok.padding_side = "left"
    return tok


@torch.inference_mode()
def cmd_extract(args):
    if args.batch < 1 or args.text_chars < 1 or args.max_new_tokens < 1:
        raise SystemExit("--batch, --text-chars and --max-new-tokens must be at least 1")
    n = args.records if args.records is not None else args.batch
    if n < 1:
        raise SystemExit("--records must be at least 1")
    dev = device_of(args)
    cfg = load_config(args.config)
    tok = load_tokenizer(args.tokenizer)
    system = system_prompt()
    prompts = [chat_prompt(system, bench_text(i, args.text_chars)) for i in range(n)]
    if getattr(tok, "chat_template", None):  # the hand-built prompt is the tokenizer's own template
        ref = tok.apply_chat_template([{"role": "system", "content": system},
                                       {"role": "user", "content": bench_text(0, args.text_chars)}],
                                      tokenize=False, add_generation_prompt=True, enable_thinking=False)
        if ref != prompts[0]:
            raise SystemExit(f"chat template mismatch:\n{ref!r}\n{prompts[0]!r}")
    model, load_s = build_model(cfg, args.attn, 42, DTYPES[args.dtype], dev)
    model.eval()
    eos = cfg.eos_token_id if cfg.eos_token_id is not None else 151645
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    T = args.max_new_tokens
    gen_kwargs = dict(max_new_tokens=T, min_new_tokens=T, do_sample=False, num_beams=1, temperature=None,
                      top_p=None, top_k=None, pad_token_id=pad, eos_token_id=eos, use_cache=True)

    chunks = [prompts[i:i + args.batch] for i in range(0, n, args.batch)]
    encoded = [tok(c, add_special_tokens=False, padding=True, return_tensors="pt") for c in chunks]
    prompt_lens = [int(x) for e in encoded for x in e["attention_mask"].sum(1)]

    def run(e):
        ids, mask = e["input_ids"].to(dev), e["attention_mask"].to(dev)
        out = model.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
        return out.shape[1] - ids.shape[1]

    run(encoded[0])  # warm-up: the first chunk's shape
    sync(dev)
    t0 = time.perf_counter()
    new = []
    for e in encoded:
        new.append(run(e) * e["input_ids"].shape[0])
    sync(dev)
    secs = time.perf_counter() - t0
    tokens = sum(new)
    if tokens != n * T:
        raise SystemExit(f"generate made {tokens} new tokens, expected {n} x {T}")

    res = common_fields(args, cfg)
    res.update({
        "bench": "extract",
        "batch": args.batch,
        "records": n,
        "text_chars": args.text_chars,
        "max_new_tokens": T,
        "prompt_tokens": sum(prompt_lens) / len(prompt_lens),
        "prompt_tokens_max": max(prompt_lens),
        "load_s": load_s,
        "seconds": secs,
        "records_per_s": n / secs,
        "tokens_per_s": tokens / secs,
        "peak_rss_mb": peak_rss_mb(),
    })
    res.update(peak_device(dev))
    emit(args, res)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--config", required=True, help="preset (%s) or config.json path" % ", ".join(PRESETS))
        sp.add_argument("--batch", type=int, default=1)
        sp.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
        sp.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
        sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        sp.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights (and autocast) dtype")
        sp.add_argument("--json", action="store_true", help="one JSON line")

    g = sub.add_parser("generate", help="prefill / decode throughput")
    common(g)
    g.add_argument("--prompt-len", type=int, default=128)
    g.add_argument("--new-tokens", type=int, default=32)
    t = sub.add_parser("train", help="LoRA training step throughput")
    common(t)
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--gradient-checkpointing", choices=["true", "false"], default="true",
                   help="transformers' per-layer gradient checkpointing (default on, as the seed recipe)")
    e = sub.add_parser("extract", help="extraction-shaped greedy generate throughput (tiqu bench extract's peer)")
    common(e)
    e.set_defaults(batch=32)
    e.add_argument("--tokenizer", default=str(Path(__file__).resolve().parents[2] / "assets" / "qwen3-tokenizer"),
                   help="the Qwen3 tokenizer folder (tokenizer.json, tokenizer_config.json)")
    e.add_argument("--records", type=int, default=None, help="records (default: one batch)")
    e.add_argument("--text-chars", type=int, default=120, help="characters per record")
    e.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per record (exactly)")

    if argv and argv[0] not in ("generate", "train", "extract", "-h", "--help"):
        argv = ["generate"] + argv
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"generate": cmd_generate, "train": cmd_train, "extract": cmd_extract}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
