#!/usr/bin/env python3
"""Check a whole model written by tiqu (`tiqu train --method full`, e.g. the quickstart's run/model) against
Hugging Face transformers.

    python3 tests/reference/check_tiqu_model.py --model RUN/model --data FILE --expect-loss LOSS [--tol 1e-4]

AutoModelForCausalLM.from_pretrained(model, float32) must load it with no missing, unexpected or mismatched
keys, the full Qwen3 vocabulary, and an eval loss within --tol (relative) of LOSS, the loss tiqu reported for
the same folder (`tiqu eval --model RUN/model --loss-only --json`). The loss convention is
check_tiqu_outputs.py's. Exit status: 0 passed, 1 the loss differs, 2 something could not be loaded.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_tiqu_outputs import LoadError, eval_loss, import_tools, load_causal_lm, load_records, rel, tokenize_record  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--expect-loss", required=True, type=float)
    p.add_argument("--tol", type=float, default=1e-4)
    args = p.parse_args()
    import_tools(False)
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    try:
        tok = AutoTokenizer.from_pretrained(args.model)
        model = load_causal_lm(args.model, "model")
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    vocab = model.get_input_embeddings().weight.shape[0]
    if vocab != 151936:
        print(f"error: {args.model}: embedding has {vocab} rows, not Qwen3's 151936", file=sys.stderr)
        sys.exit(1)
    loss, n = eval_loss(model, [tokenize_record(tok, r) for r in load_records(args.data)])
    r = rel(loss, args.expect_loss)
    ok = r <= args.tol
    print(f"{'ok  ' if ok else 'FAIL'} full model: transformers loss {loss:.6f} over {n} tokens, tiqu "
          f"{args.expect_loss:.6f}, rel diff {r:.2e} (tol {args.tol:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
