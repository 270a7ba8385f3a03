"""transformers' greedy `generate` on a saved model folder and real texts: the peer of
`tiqu extract --speculate …` in BENCHMARKS.md (issue 16). The prompt is tiqu's (the default
schema's system prompt, the text as the user message, Qwen3's template with thinking disabled),
generation stops at the end-of-turn token or after --max-new-tokens. At batch 1 optionally with
prompt lookup (`prompt_lookup_num_tokens`, transformers' n-gram drafts from the prompt), at larger
batches plain (prompt lookup is batch 1 only).

    python3 tests/reference/bench_generate_folder.py --model runs/…/model \
        --tokenizer assets/qwen3-tokenizer --texts heldout.jsonl --batch 1 --prompt-lookup 10
Prints one JSON line: records, seconds, records_per_s, new_tokens.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_transformers import chat_prompt, system_prompt  # noqa: E402


@torch.inference_mode()
def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--texts", required=True, help="JSONL with `text` or `input`, or one text per line")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-lookup", type=int, default=0, help="prompt_lookup_num_tokens (batch 1 only)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.batch < 1 or (args.prompt_lookup and args.batch != 1):
        raise SystemExit("--batch must be at least 1, and prompt lookup needs --batch 1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    texts = []
    for line in Path(args.texts).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            texts.append(r.get("text") or r.get("input") if isinstance(r, dict) else line)
        except json.JSONDecodeError:
            texts.append(line)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    model.eval()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    prompts = [chat_prompt(system_prompt(), t) for t in texts]
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False, num_beams=1, temperature=None, top_p=None,
                  top_k=None, pad_token_id=pad, eos_token_id=eos, use_cache=True)
    if args.prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = args.prompt_lookup
    chunks = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch)]
    warm = tok(chunks[0], add_special_tokens=False, padding=True, return_tensors="pt")
    model.generate(**warm, **kwargs)
    new_tokens = 0
    t0 = time.perf_counter()
    for c in chunks:
        e = tok(c, add_special_tokens=False, padding=True, return_tensors="pt")
        out = model.generate(**e, **kwargs)
        new = out[:, e["input_ids"].shape[1]:]
        new_tokens += int((new != pad).sum()) if pad != eos else int(new.numel())
    secs = time.perf_counter() - t0
    print(json.dumps({"records": len(prompts), "batch": args.batch, "prompt_lookup": args.prompt_lookup,
                      "seconds": secs, "records_per_s": len(prompts) / secs, "new_tokens": new_tokens,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1:])
