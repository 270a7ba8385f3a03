#!/usr/bin/env python3
"""Build PEFT LoRA reference fixtures (adapters, gradients, optimizer steps, eval losses) for the Rust
LoRA parity tests, on top of the tiny random checkpoints written by make_fixtures.py.

Run from the repository root, after make_fixtures.py:

    python3 tests/reference/make_peft_fixtures.py

Deterministic (single CPU thread, deterministic algorithms, fixed seeds); overwrites everything it writes.
Nothing is downloaded.

Outputs (see tests/reference/README.md, section "PEFT / LoRA fixtures"):
  tests/fixtures/peft-train/initial/{adapter_config.json, adapter_model.safetensors}
  tests/fixtures/peft-train/after3/{adapter_config.json, adapter_model.safetensors}
  tests/fixtures/peft-train/grads.safetensors
  tests/fixtures/peft-train/reference.json
  tests/fixtures/peft-adapter-tied/{adapter_config.json, adapter_model.safetensors, reference.json}
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import math
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
import peft
import transformers
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)
torch.set_num_threads(1)  # fixed reduction order -> byte-identical outputs on re-run
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[2]
os.chdir(ROOT)  # base paths below are relative to the repo root (they end up in adapter_config.json)
FIX = Path("tests") / "fixtures"
TOK_DIR = Path("assets") / "qwen3-tokenizer"

EOS_ID = 151645  # <|im_end|>
PAD_ID = 151643  # <|endoftext|>
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

TRAIN = dict(
    base="tests/fixtures/tiny-untied",
    out=FIX / "peft-train",
    r=4,
    alpha=16,
    target_modules=ALL_PROJ,
    use_rslora=False,
    a_seed=1234,  # torch.manual_seed before get_peft_model -> PEFT's own kaiming-uniform(a=sqrt(5)) init of A
    b_seed=4321,  # torch.Generator seed for B ~ N(0, 0.1^2)
    b_std=0.1,
    one_step_records=[0, 1],
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.0,
    accumulation=2,
    micro_batches=[[0], [1], [2], [3], [4], [5]],
)

TIED = dict(
    base="tests/fixtures/tiny-tied",
    out=FIX / "peft-adapter-tied",
    r=8,
    alpha=32,
    target_modules=["q_proj", "v_proj", "down_proj"],
    use_rslora=True,
    a_seed=2024,
    b_seed=4202,
    b_std=0.1,
)


# ----------------------------------------------------------------------------------------------
# helpers


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def load_sft():
    with open(FIX / "sft_small.jsonl", encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def chat_text(tok, messages):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def tokenize_record(tok, r):
    """-> (input_ids, labels): the tokenization contract of make_fixtures.py."""
    msgs = []
    if r.get("system") is not None:
        msgs.append({"role": "system", "content": r["system"]})
    msgs.append({"role": "user", "content": r["instruction"] + r.get("input", "")})
    prompt_ids = list(tok(chat_text(tok, msgs))["input_ids"])
    resp_ids = list(tok(r["output"] + "<|im_end|>")["input_ids"])
    assert resp_ids[-1] == EOS_ID
    return prompt_ids + resp_ids, [-100] * len(prompt_ids) + resp_ids


def right_pad(examples):
    """[(ids, labels)] -> input_ids, attention_mask, labels tensors, right-padded with PAD_ID / -100."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), n), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def nll_sum_f32(model, ids, mask, labels):
    """Sum over the batch of the shifted causal-LM NLL of the labelled tokens (f32, differentiable),
    and the number of labelled tokens."""
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    lg = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    y = labels[:, 1:].reshape(-1)
    return F.cross_entropy(lg, y, ignore_index=-100, reduction="sum"), int((y != -100).sum())


@torch.no_grad()
def eval_losses(model, examples):
    """make_fixtures.py convention: each record alone (no padding), per-record NLL sums computed in f64
    from the f32 logits; loss = sum nll / sum tokens."""
    model.eval()
    per = []
    for ids, labels in examples:
        lp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        y = torch.tensor(labels[1:])
        m = y != -100
        nll = -float(lp[:-1][m].gather(-1, y[m].unsqueeze(-1)).sum())
        per.append({"nll_sum": nll, "tokens": int(m.sum())})
    tot = sum(p["nll_sum"] for p in per)
    n = sum(p["tokens"] for p in per)
    return {"loss": tot / n, "tokens": n, "per_record": per}


def load_base(path):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (k, info[k])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model


def lora_config(spec):
    return LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        lora_dropout=0.0,
        target_modules=list(spec["target_modules"]),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
        use_rslora=spec["use_rslora"],
        init_lora_weights=True,
    )


def checked_base_eval(spec, examples):
    """Eval losses of the base alone, asserted equal to make_fixtures.py's recorded loss."""
    base = load_base(spec["base"])
    ev_base = eval_losses(base, examples)
    with open(Path(spec["base"]) / "reference.json", encoding="utf-8") as f:
        base_ref = json.load(f)["losses"]
    assert abs(ev_base["loss"] - base_ref["loss"]) <= 1e-6 * abs(base_ref["loss"]), (ev_base["loss"], base_ref["loss"])
    return ev_base


def make_peft(spec):
    base = load_base(spec["base"])
    torch.manual_seed(spec["a_seed"])
    model = get_peft_model(base, lora_config(spec))
    g = torch.Generator().manual_seed(spec["b_seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(spec["b_std"] * torch.randn(p.shape, generator=g))
    return model


def lora_params(model):
    """name (as in adapter_model.safetensors) -> parameter, in module order."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            assert p.requires_grad, name
            out[name.replace(".default.weight", ".weight")] = p
        else:
            assert not p.requires_grad, name
    return out


def save_adapter(model, out):
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(out))
    # PEFT keeps target_modules as a set and writes it in hash order (PYTHONHASHSEED-dependent): sort it so
    # re-runs are byte-identical; same json.dumps style as PeftConfig.save_pretrained. Drop the model card.
    cfg_path = out / "adapter_config.json"
    with open(cfg_path, encoding="utf-8") as f:
        conf = json.load(f)
    conf["target_modules"] = sorted(conf["target_modules"])
    with open(cfg_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(conf, indent=2, sort_keys=True))
    (out / "README.md").unlink(missing_ok=True)
    for f in out.iterdir():
        f.chmod(0o644)
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as h:
        saved = {k: h.get_tensor(k) for k in h.keys()}
    params = lora_params(model)
    assert set(saved) == set(params), sorted(set(saved) ^ set(params))
    for k, p in params.items():
        assert torch.equal(saved[k], p.detach()), k
    return saved


def check_shapes(saved, spec, cfg):
    hd = cfg.head_dim
    io = {
        "q_proj": (cfg.hidden_size, cfg.num_attention_heads * hd),
        "k_proj": (cfg.hidden_size, cfg.num_key_value_heads * hd),
        "v_proj": (cfg.hidden_size, cfg.num_key_value_heads * hd),
        "o_proj": (cfg.num_attention_heads * hd, cfg.hidden_size),
        "gate_proj": (cfg.hidden_size, cfg.intermediate_size),
        "up_proj": (cfg.hidden_size, cfg.intermediate_size),
        "down_proj": (cfg.intermediate_size, cfg.hidden_size),
    }
    want = set()
    for layer in range(cfg.num_hidden_layers):
        for m in spec["target_modules"]:
            grp = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            pre = f"base_model.model.model.layers.{layer}.{grp}.{m}"
            i, o = io[m]
            want.add(pre + ".lora_A.weight")
            want.add(pre + ".lora_B.weight")
            assert tuple(saved[pre + ".lora_A.weight"].shape) == (spec["r"], i)
            assert tuple(saved[pre + ".lora_B.weight"].shape) == (o, spec["r"])
    assert set(saved) == want, sorted(set(saved) ^ want)


def dir_size(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def scaling_of(spec):
    return spec["alpha"] / (math.sqrt(spec["r"]) if spec["use_rslora"] else spec["r"])


def check_scaling(model, spec):
    from peft.tuners.lora import LoraLayer

    s = {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)}
    assert s == {scaling_of(spec)}, (s, scaling_of(spec))


# ----------------------------------------------------------------------------------------------
# peft-train (base tiny-untied)


def build_train(tok, recs):
    spec = TRAIN
    out = spec["out"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    examples = [tokenize_record(tok, r) for r in recs]

    # eval: base alone (must equal make_fixtures' number)
    ev_base = checked_base_eval(spec, examples)

    # initial adapter
    model = make_peft(spec)
    check_scaling(model, spec)
    init_saved = save_adapter(model, out / "initial")
    check_shapes(init_saved, spec, model.base_model.model.config)
    assert all(float(v.abs().max()) > 0 for v in init_saved.values())
    ev_init = eval_losses(model, examples)

    # one backward on records 0+1, right padded
    model.train()
    params = lora_params(model)
    ids, mask, labels = right_pad([examples[i] for i in spec["one_step_records"]])
    nll, ntok = nll_sum_f32(model, ids, mask, labels)
    loss = nll / ntok
    with torch.no_grad():
        hf_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss  # HF mean over labelled tokens
    assert abs(float(hf_loss) - loss.item()) <= 1e-5 * abs(loss.item()), (float(hf_loss), loss.item())
    loss.backward()
    grads = {k: p.grad.detach().clone().contiguous() for k, p in params.items()}
    for k, gr in grads.items():
        assert float(gr.abs().max()) > 0, f"zero gradient for {k}"
    save_file(grads, str(out / "grads.safetensors"), metadata={"format": "pt"})
    (out / "grads.safetensors").chmod(0o644)
    one_step = {"records": spec["one_step_records"], "loss": loss.item(), "tokens": ntok,
                "nll_sum": nll.item(), "padded_shape": list(ids.shape), "pad_id": PAD_ID}
    for p in params.values():
        p.grad = None

    # 3 AdamW steps, gradient accumulation 2, micro-batches of one record
    opt = torch.optim.AdamW(list(params.values()), lr=spec["lr"], betas=spec["betas"], eps=spec["eps"],
                            weight_decay=spec["weight_decay"])
    n_steps = len(spec["micro_batches"]) // spec["accumulation"]
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=n_steps)
    losses, lrs, step_tokens, micro_losses = [], [], [], []
    for step in range(n_steps):
        group = spec["micro_batches"][step * spec["accumulation"]:(step + 1) * spec["accumulation"]]
        batches = [right_pad([examples[i] for i in mb]) for mb in group]
        num_items = sum(int((b[2][:, 1:] != -100).sum()) for b in batches)  # Trainer's num_items_in_batch
        acc = 0.0
        for ids, mask, labels in batches:
            nll, _ = nll_sum_f32(model, ids, mask, labels)
            l = nll / num_items
            l.backward()
            acc += l.item()
            micro_losses.append(l.item())
        lrs.append(opt.param_groups[0]["lr"])
        if step == 0 and group == [[i] for i in spec["one_step_records"]]:
            # accumulating records 0 and 1 one by one == the padded batch of both (same loss normalisation)
            for k, p in params.items():
                assert torch.allclose(p.grad, grads[k], rtol=1e-4, atol=1e-6 * float(grads[k].abs().max())), k
        # no gradient clipping (Trainer's max_grad_norm would clip; deliberately not done here)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(acc)
        step_tokens.append(num_items)
    assert all(abs(a - spec["lr"] * (n_steps - s) / n_steps) < 1e-15 for s, a in enumerate(lrs)), lrs
    after_saved = save_adapter(model, out / "after3")
    check_shapes(after_saved, spec, model.base_model.model.config)
    assert all(not torch.equal(after_saved[k], init_saved[k]) for k in init_saved)
    ev_after_mem = eval_losses(model, examples)
    del model, opt, params

    # reload both adapters from disk (round-trip) and evaluate
    m = PeftModel.from_pretrained(load_base(spec["base"]), str(out / "after3"))
    ev_after = eval_losses(m, examples)
    assert abs(ev_after["loss"] - ev_after_mem["loss"]) <= 1e-9 * abs(ev_after["loss"])
    del m
    m = PeftModel.from_pretrained(load_base(spec["base"]), str(out / "initial"))
    ev_init2 = eval_losses(m, examples)
    assert abs(ev_init2["loss"] - ev_init["loss"]) <= 1e-9 * abs(ev_init["loss"])
    merged = m.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ev_merged = eval_losses(merged, examples)
    del m, merged

    rel = abs(ev_merged["loss"] - ev_init["loss"]) / abs(ev_init["loss"])
    assert rel < 1e-4, (ev_merged["loss"], ev_init["loss"])
    assert abs(ev_init["loss"] - ev_base["loss"]) > 1e-3 * abs(ev_base["loss"]), "initial adapter does not change the loss"
    assert abs(ev_after["loss"] - ev_init["loss"]) > 1e-4 * abs(ev_init["loss"]), "training did not change the loss"

    ref = {
        "generator": "tests/reference/make_peft_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "base": spec["base"],
        "lora": {"r": spec["r"], "lora_alpha": spec["alpha"], "scaling": scaling_of(spec), "use_rslora": False,
                 "lora_dropout": 0.0, "target_modules": spec["target_modules"], "bias": "none",
                 "init": {"A": f"PEFT default (kaiming_uniform a=sqrt(5)), torch.manual_seed({spec['a_seed']}) "
                               "before get_peft_model",
                          "B": f"N(0, {spec['b_std']}^2), torch.Generator seed {spec['b_seed']}, "
                               "filled in named_parameters() order"}},
        "loss_convention": "shifted causal-LM NLL over response tokens (labels -100 on prompt/pad); "
                           "sum of NLL / number of response tokens",
        "one_step": one_step,
        "three_steps": {
            "lr": spec["lr"], "betas": list(spec["betas"]), "eps": spec["eps"], "weight_decay": spec["weight_decay"],
            "optimizer": "torch.optim.AdamW over the lora_A/lora_B params only",
            "schedule": "transformers.get_linear_schedule_with_warmup(opt, 0, 3), scheduler.step() after each step",
            "grad_clip": None,
            "accumulation": spec["accumulation"],
            "micro_batches": spec["micro_batches"],
            "micro_batch_loss": "micro NLL sum / total response tokens of the accumulated group",
            "losses": losses,
            "micro_losses": micro_losses,
            "tokens": step_tokens,
            "lrs": lrs,
        },
        "eval": {
            "convention": "each record alone (no padding), NLL sums in f64 from f32 logits; "
                          "loss = sum nll / sum response tokens over all 6 records of sft_small.jsonl",
            "base": ev_base["loss"], "initial": ev_init["loss"], "after3": ev_after["loss"],
            "tokens": ev_base["tokens"],
            "per_record": {"base": ev_base["per_record"], "initial": ev_init["per_record"],
                           "after3": ev_after["per_record"]},
        },
        "merged_initial_loss": ev_merged["loss"],
    }
    dump_json(out / "reference.json", ref)
    return ref


# ----------------------------------------------------------------------------------------------
# peft-adapter-tied (base tiny-tied)


def build_tied(tok, recs):
    spec = TIED
    out = spec["out"]
    if out.exists():
        shutil.rmtree(out)
    examples = [tokenize_record(tok, r) for r in recs]

    ev_base = checked_base_eval(spec, examples)

    model = make_peft(spec)
    check_scaling(model, spec)
    saved = save_adapter(model, out)
    check_shapes(saved, spec, model.base_model.model.config)
    ev = eval_losses(model, examples)
    del model
    m = PeftModel.from_pretrained(load_base(spec["base"]), str(out))
    ev2 = eval_losses(m, examples)
    assert abs(ev2["loss"] - ev["loss"]) <= 1e-9 * abs(ev["loss"])
    del m
    assert abs(ev["loss"] - ev_base["loss"]) > 1e-3 * abs(ev_base["loss"]), "adapter does not change the loss"

    ref = {
        "generator": "tests/reference/make_peft_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "base": spec["base"],
        "base_loaded_as": "float32 (bf16 files widened)",
        "lora": {"r": spec["r"], "lora_alpha": spec["alpha"], "scaling": scaling_of(spec), "use_rslora": True,
                 "lora_dropout": 0.0, "target_modules": spec["target_modules"], "bias": "none",
                 "init": {"A": f"PEFT default (kaiming_uniform a=sqrt(5)), torch.manual_seed({spec['a_seed']}) "
                               "before get_peft_model",
                          "B": f"N(0, {spec['b_std']}^2), torch.Generator seed {spec['b_seed']}"}},
        "eval": {
            "convention": "each record alone (no padding), NLL sums in f64 from f32 logits; "
                          "loss = sum nll / sum response tokens over all 6 records of sft_small.jsonl",
            "base": ev_base["loss"], "adapter": ev["loss"], "tokens": ev["tokens"],
            "per_record": {"base": ev_base["per_record"], "adapter": ev["per_record"]},
        },
    }
    dump_json(out / "reference.json", ref)
    return ref


def main():
    tok = AutoTokenizer.from_pretrained(str(TOK_DIR))
    recs = load_sft()
    assert len(recs) == 6
    tr = build_train(tok, recs)
    ti = build_tied(tok, recs)

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"peft-train (tiny-untied, r=4, alpha=16, scaling {tr['lora']['scaling']}, all 7 projections):")
    print(f"  one backward, records 0+1: loss {tr['one_step']['loss']:.6f} over {tr['one_step']['tokens']} tokens")
    print(f"  3 AdamW steps (accum 2): losses {[round(x, 6) for x in tr['three_steps']['losses']]}, "
          f"lrs {tr['three_steps']['lrs']}")
    e = tr["eval"]
    print(f"  eval loss: base {e['base']:.6f} | +initial {e['initial']:.6f} | +after3 {e['after3']:.6f} | "
          f"merged(initial) {tr['merged_initial_loss']:.6f}")
    e = ti["eval"]
    print(f"peft-adapter-tied (tiny-tied, r=8, alpha=32, rslora scaling {ti['lora']['scaling']}, q/v/down): "
          f"eval loss base {e['base']:.6f} | +adapter {e['adapter']:.6f}")
    for d in (TRAIN["out"], TIED["out"]):
        print(f"  {d}: {dir_size(d) / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
