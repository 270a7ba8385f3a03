#!/usr/bin/env python3
"""The config files transformers writes for a Qwen3Config made without special-token ids, and
transformers' loss on them: `"eos_token_id": null` in config.json and in generation_config.json.

Run from the repository root after make_fixtures.py (it reuses tiny-untied's weights and tokenizer):

    python3 tests/reference/make_null_eos_fixture.py

Writes tests/fixtures/null-eos/{config.json, generation_config.json, reference.json}. The Rust test
(native/tests/eos.rs) assembles a model folder from these files plus tiny-untied's weights and
tokenizer files, so the weights are not committed twice.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
SRC = FIX / "tiny-untied"
OUT = FIX / "null-eos"


def main():
    base = json.loads((SRC / "config.json").read_text())
    # tiny-untied's shape, but no bos/eos/pad ids: what a user gets from a fresh config.
    shape = {k: base[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                 "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                                 "rms_norm_eps", "tie_word_embeddings")}
    cfg = Qwen3Config(**shape, rope_parameters=base["rope_parameters"])
    cfg.architectures = ["Qwen3ForCausalLM"]
    assert cfg.eos_token_id is None, cfg.eos_token_id
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        Qwen3ForCausalLM(cfg).save_pretrained(d)
        config = json.loads((d / "config.json").read_text())
        generation = json.loads((d / "generation_config.json").read_text())
        assert "eos_token_id" in config and config["eos_token_id"] is None, config
        generation.setdefault("eos_token_id", None)
        assert generation["eos_token_id"] is None, generation
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (OUT / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        # The folder the Rust test assembles: these two files, tiny-untied's weights and tokenizer.
        for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(SRC / name, d / name)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(d)
        eos = tok.convert_tokens_to_ids(tok.eos_token)
        tot_nll, tot_tok = 0.0, 0
        for line in (FIX / "sft_small.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            msgs = ([{"role": "system", "content": r["system"]}] if r.get("system") is not None else []) + [
                {"role": "user", "content": r["instruction"] + r.get("input", "")}]
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            prompt_ids = list(tok(prompt)["input_ids"])
            resp_ids = list(tok(r["output"] + "<|im_end|>")["input_ids"])
            inp = prompt_ids + resp_ids
            labels = [-100] * len(prompt_ids) + resp_ids
            with torch.no_grad():
                loss = float(model(torch.tensor([inp]), labels=torch.tensor([labels])).loss)
            tot_nll += loss * len(resp_ids)
            tot_tok += len(resp_ids)
    ref = {
        "transformers_version": transformers.__version__,
        "eos_token": tok.eos_token,
        "eos_token_id": eos,
        "loss": tot_nll / tot_tok,
        "tokens": tot_tok,
        "file": "tests/fixtures/sft_small.jsonl",
    }
    (OUT / "reference.json").write_text(json.dumps(ref, indent=2) + "\n")
    print(f"null-eos: eos from the tokenizer {tok.eos_token} ({eos}), loss {ref['loss']:.6f} over {tot_tok} tokens")


if __name__ == "__main__":
    main()
