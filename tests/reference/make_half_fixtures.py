#!/usr/bin/env python3
"""Reference losses of the tiny checkpoints in half precision, for tiqu's bf16/f16 path
(`Qwen3ForCausalLM::cast_base`): transformers with every weight cast to bfloat16 / float16 (and a PEFT
adapter kept in float32 on the bf16 base, as PEFT does by default), loaded with
`from_pretrained(dtype=...)`, eager attention (softmax in f32,
as tiqu), each record of tests/fixtures/sft_small.jsonl alone, NLL sums in f64 from logits upcast to
f32. Also the float32 losses, so a test can tell "half precision as transformers computes it" from
"float32".

Run from the repository root after make_fixtures.py and make_peft_fixtures.py:

    python3 tests/reference/make_half_fixtures.py

Writes tests/fixtures/half_precision.json. Nothing is downloaded; deterministic on the CPU.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
FIX = Path("tests/fixtures")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def records(base):
    ref = json.loads((FIX / base / "reference.json").read_text())
    return [(r["input_ids"], r["prompt_len"]) for r in ref["losses"]["per_record"]]


@torch.no_grad()
def losses(model, recs):
    per = []
    for ids, plen in recs:
        logits = model(torch.tensor([ids])).logits[0].float().double()
        lp = logits.log_softmax(-1)
        nll = -sum(float(lp[t, ids[t + 1]]) for t in range(plen - 1, len(ids) - 1))
        per.append(nll)
    tokens = sum(len(ids) - plen for ids, plen in recs)
    return {"loss": sum(per) / tokens, "nll_sums": per, "tokens": tokens}


def base_model(name, dtype):
    # Loaded in `dtype` as users load it (`.to(dtype)` afterwards would also round the rotary
    # inv_freq buffer, which from_pretrained keeps in f32).
    m = AutoModelForCausalLM.from_pretrained(FIX / name, dtype=dtype, attn_implementation="eager").eval()
    assert m.model.rotary_emb.inv_freq.dtype == torch.float32
    return m


def main():
    out = {
        "generator": "tests/reference/make_half_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "convention": "each record alone; from_pretrained(dtype=...), eager attention; logits upcast to f32; NLL in f64",
        "models": {},
    }
    for name in ["tiny-tied", "tiny-untied"]:
        recs = records(name)
        out["models"][name] = {k: losses(base_model(name, dt), recs) for k, dt in DTYPES.items()}
    recs = records("tiny-tied")
    entry = {}
    for k in ["f32", "bf16"]:
        m = PeftModel.from_pretrained(base_model("tiny-tied", DTYPES[k]), FIX / "peft-adapter-tied")
        dtypes = {p.dtype for n, p in m.named_parameters() if "lora_" in n}
        assert dtypes == {torch.float32}, dtypes  # PEFT keeps adapters in f32 on a half base
        entry[k] = losses(m.eval(), recs)
    out["models"]["tiny-tied+peft-adapter-tied"] = entry
    (FIX / "half_precision.json").write_text(json.dumps(out, indent=1) + "\n")
    for name, e in out["models"].items():
        print(name, {k: round(v["loss"], 6) for k, v in e.items()})


if __name__ == "__main__":
    main()
