#!/usr/bin/env python3
"""Build tiny random Qwen3 checkpoints and the reference numbers the Rust parity tests compare against.

Run from the repository root:

    python3 tests/reference/make_fixtures.py

Everything is built locally (no Hugging Face Hub access): random Qwen3ForCausalLM models from a fixed
seed, the real Qwen3 tokenizer from assets/qwen3-tokenizer/. Re-running overwrites the fixtures with
identical bytes (same machine, same pinned versions; see requirements.txt).

Outputs (see tests/reference/README.md):
  tests/fixtures/tiny-tied/        bf16, 2 shards + index, old-style config.json, tied embeddings
  tests/fixtures/tiny-untied/      f32, single model.safetensors, transformers>=5 config.json, lm_head
  tests/fixtures/<name>/reference.json
  tests/fixtures/sft_small.jsonl
  tests/fixtures/chat_template.json
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
torch.set_num_threads(1)  # fixed reduction order -> byte-identical outputs on re-run
torch.use_deterministic_algorithms(True)

ROOT = Path(__file__).resolve().parents[2]
TOK_DIR = ROOT / "assets" / "qwen3-tokenizer"
FIX = ROOT / "tests" / "fixtures"

VOCAB = 151936
BOS_ID = 151643  # <|endoftext|>
EOS_ID = 151645  # <|im_end|>
PAD_ID = 151643
STOP_IDS = [151645, 151643]
MAX_NEW_TOKENS = 16
MIN_MARGIN = 0.05

COMMON = dict(
    vocab_size=VOCAB,
    num_hidden_layers=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    attention_bias=False,
    attention_dropout=0.0,
    use_cache=True,
    use_sliding_window=False,
    sliding_window=None,
    max_window_layers=2,
    initializer_range=0.02,
)

# name -> model shape, storage and init scales.
# Weight init: embeddings/linears ~ N(0, std^2); RMSNorm weights ~ 1 + norm_jitter * N(0,1);
# the final model.norm weight is then multiplied by final_norm_scale (it scales every logit, so the
# absolute top-1/top-2 gaps grow with it), and each row of the output projection (lm_head, i.e. the
# embedding matrix when tied) is multiplied by exp(out_row_sigma * N(0,1)) -- a mild heavy tail that
# widens the *relative* top-1/top-2 gaps. Seeds were picked (out of 1..10) for the largest minimum
# relative gap over prompt positions and greedy steps while keeping the greedy outputs varied.
FIXTURES = {
    "tiny-tied": dict(
        hidden_size=16,
        intermediate_size=40,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,  # != hidden/heads (4): exercises an explicit head_dim
        tie_word_embeddings=True,
        rope_theta=1000000,
        storage="bf16",
        config_form="old",
        seed=6,
        emb_std=1.0,
        lin_std=0.5,
        lm_head_std=None,
        norm_jitter=0.3,
        final_norm_scale=8.0,
        out_row_sigma=0.3,
    ),
    "tiny-untied": dict(
        # Spec said hidden 16 / 4 heads; with f32 + untied that is 2 x 151936 x 16 x 4 B = 19.5 MB,
        # which breaks the "~10 MB per fixture, well under 25 MB total" budget. hidden 8 / 2 heads
        # keeps head_dim = hidden/heads = 4 (two RoPE frequencies) at 9.7 MB.
        hidden_size=8,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,  # GQA ratio 1
        head_dim=4,  # == hidden/heads
        tie_word_embeddings=False,
        rope_theta=10000,
        storage="f32",
        config_form="new",
        seed=5,
        emb_std=1.0,
        lin_std=0.5,
        lm_head_std=1.0,
        norm_jitter=0.3,
        final_norm_scale=8.0,
        out_row_sigma=0.0,
    ),
}

EXTRACT_INSTRUCTION = (
    "将文本中的name、address、email、question提取出来，以json格式输出，字段为name、address、email、question，"
    "值为文本中提取出来的内容。"
)

PROMPTS = [
    dict(
        system="你是一个客服助手，负责整理用户投诉。",
        user="我叫李明，住在北京市朝阳区建国路88号，邮箱liming@example.com。我上周买的洗衣机一直漏水，客服也不回复，请问怎么退货？",
    ),
    dict(
        system=None,
        user="你好！快递（单号：SF123456）已经三天没有更新了😡，能帮我查一下吗？",
    ),
    dict(
        system=None,
        user="Hello, my name is John Smith. The package I ordered never arrived at 12 Baker Street. What should I do?",
    ),
]

SFT_RECORDS = [
    dict(
        system=EXTRACT_INSTRUCTION,
        instruction="文本：",
        input="你好，我是张伟，家住上海市浦东新区世纪大道100号，邮箱zhangwei@163.com，我想问一下为什么我的宽带连续三天断网？",
        output={"name": "张伟", "address": "上海市浦东新区世纪大道100号", "email": "zhangwei@163.com", "question": "为什么我的宽带连续三天断网？"},
    ),
    dict(
        system="你是一个严谨的信息抽取助手。",
        instruction=EXTRACT_INSTRUCTION,
        input="本人王芳，地址：广州市天河区体育西路2号。邮箱 wangfang@qq.com 。请问上个月多扣的话费什么时候退还？",
        output={"name": "王芳", "address": "广州市天河区体育西路2号", "email": "wangfang@qq.com", "question": "上个月多扣的话费什么时候退还？"},
    ),
    dict(
        # no system
        instruction=EXTRACT_INSTRUCTION,
        input="投诉人：刘强\n住址：深圳市南山区科技园路1号\n联系邮箱：liuqiang@example.cn\n问题：物业费为什么突然涨价了？",
        output={"name": "刘强", "address": "深圳市南山区科技园路1号", "email": "liuqiang@example.cn", "question": "物业费为什么突然涨价了？"},
    ),
    dict(
        # no input: the complaint is inside the instruction
        system=EXTRACT_INSTRUCTION,
        instruction="陈静（杭州市西湖区文三路5号，chenjing@foxmail.com）反映：小区门口的路灯坏了一个月，什么时候能修好？",
        output={"name": "陈静", "address": "杭州市西湖区文三路5号", "email": "chenjing@foxmail.com", "question": "小区门口的路灯坏了一个月，什么时候能修好？"},
    ),
    dict(
        system=EXTRACT_INSTRUCTION,
        instruction="请从下面的投诉中提取信息：\n",
        input="我是赵磊😤！！我的手机号被停机了，没有任何通知。邮箱zhaolei@outlook.com，能不能马上恢复？",
        output={"name": "赵磊", "address": "", "email": "zhaolei@outlook.com", "question": "能不能马上恢复？"},
    ),
    dict(
        system=EXTRACT_INSTRUCTION,
        instruction="Extract the fields from this text: ",
        input="Hi, I'm Emily Chen from 45 Park Avenue, New York. Email: emily.chen@mail.com. Why was my refund rejected?",
        output={"name": "Emily Chen", "address": "45 Park Avenue, New York", "email": "emily.chen@mail.com", "question": "Why was my refund rejected?"},
    ),
]

CHAT_CASES = [
    ("system_en", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]),
    ("no_system_zh", [
        {"role": "user", "content": "请问怎么申请退款"},
    ]),
    ("fullwidth_emoji", [
        {"role": "system", "content": EXTRACT_INSTRUCTION},
        {"role": "user", "content": "您好！我的订单（编号：２０２４０１）怎么还没到？😡🙏「急」……谢谢～"},
    ]),
    ("newlines_tabs", [
        {"role": "user", "content": "line one\nline two\n\n  indented line\twith tab\n"},
    ]),
    ("empty_system", [
        {"role": "system", "content": ""},
        {"role": "user", "content": "hi"},
    ]),
    ("leading_trailing_spaces", [
        {"role": "user", "content": "  spaced out  "},
    ]),
    ("literal_im_end_in_user", [
        {"role": "user", "content": "ignore this <|im_end|> and <|endoftext|> please"},
    ]),
]


# ----------------------------------------------------------------------------------------------
# helpers


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def messages_for(system, user):
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    return msgs


def chat_text(tok, messages):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)


def encode(tok, text):
    return list(tok(text)["input_ids"])


def top2_margin(logits):
    """logits [..., V] -> top1 - top2 per row."""
    t = logits.float().topk(2, dim=-1).values
    return t[..., 0] - t[..., 1]


def rel_margin(logits):
    """top1 - top2 divided by the std of that row's logits (scale-free decisiveness)."""
    return top2_margin(logits) / logits.float().std(dim=-1)


def cut_at_stop(ids):
    for i, t in enumerate(ids):
        if t in STOP_IDS:
            return ids[:i], True
    return ids, False


# ----------------------------------------------------------------------------------------------
# model construction


def build_config(spec):
    kw = dict(COMMON)
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "tie_word_embeddings"):
        kw[k] = spec[k]
    kw["rope_parameters"] = {"rope_type": "default", "rope_theta": float(spec["rope_theta"])}
    cfg = Qwen3Config(**kw)
    cfg.architectures = ["Qwen3ForCausalLM"]
    return cfg


def init_weights(model, spec):
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head is de-duplicated here
            shape = tuple(p.shape)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + spec["norm_jitter"] * torch.randn(shape, generator=g))
            elif name == "model.embed_tokens.weight":
                p.copy_(spec["emb_std"] * torch.randn(shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(spec["lm_head_std"] * torch.randn(shape, generator=g))
            else:
                p.copy_(spec["lin_std"] * torch.randn(shape, generator=g))
        model.model.norm.weight.mul_(spec["final_norm_scale"])
        if spec["out_row_sigma"]:
            g2 = torch.Generator().manual_seed(spec["seed"] + 1000)
            w = model.lm_head.weight  # == embed_tokens.weight when tied
            w.mul_(torch.exp(spec["out_row_sigma"] * torch.randn(w.shape[0], 1, generator=g2)))


def old_form_config(spec):
    """config.json exactly in the shape of the published Qwen3 checkpoints (transformers 4.51)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": spec["head_dim"],
        "hidden_act": "silu",
        "hidden_size": spec["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": spec["intermediate_size"],
        "max_position_embeddings": 512,
        "max_window_layers": 2,
        "model_type": "qwen3",
        "num_attention_heads": spec["num_attention_heads"],
        "num_hidden_layers": 2,
        "num_key_value_heads": spec["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": spec["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": spec["tie_word_embeddings"],
        "torch_dtype": "bfloat16" if spec["storage"] == "bf16" else "float32",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


def new_form_config(saved, spec):
    """config.json as transformers>=5 writes it (taken from save_pretrained's own output), pinned to
    rope_parameters + dtype, with no top-level rope_theta/torch_dtype."""
    d = dict(saved)
    d["architectures"] = ["Qwen3ForCausalLM"]
    d["dtype"] = "bfloat16" if spec["storage"] == "bf16" else "float32"
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    for k in ("rope_theta", "torch_dtype", "rope_scaling"):
        d.pop(k, None)
    return dict(sorted(d.items()))


def save_pretrained_reference(model):
    """Key set and config.json that model.save_pretrained() writes (cross-check / template)."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        keys = set()
        for f in Path(d).glob("*.safetensors"):
            with safe_open(str(f), "pt") as h:
                keys |= set(h.keys())
        with open(Path(d) / "config.json", encoding="utf-8") as f:
            conf = json.load(f)
    return keys, conf


def write_checkpoint(model, spec, out):
    sd = model.state_dict()
    if spec["tie_word_embeddings"]:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    dtype = torch.bfloat16 if spec["storage"] == "bf16" else torch.float32
    sd = {k: v.detach().to(dtype).contiguous().clone() for k, v in sd.items()}

    ref_keys, saved_conf = save_pretrained_reference(model)
    assert set(sd) == ref_keys, (sorted(set(sd) ^ ref_keys))

    if spec["storage"] == "bf16":
        # two shards: embeddings + layer 0 | layer 1 + final norm (a layer boundary split, like real ckpts)
        n1, n2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
        wmap = {}
        for k in sd:
            wmap[k] = n1 if (k.startswith("model.embed_tokens.") or k.startswith("model.layers.0.")) else n2
        for name in (n1, n2):
            save_file({k: v for k, v in sd.items() if wmap[k] == name}, str(out / name), metadata={"format": "pt"})
        total = sum(v.numel() * v.element_size() for v in sd.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}
        dump_json(out / "model.safetensors.index.json", index)
    else:
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})

    conf = old_form_config(spec) if spec["config_form"] == "old" else new_form_config(saved_conf, spec)
    dump_json(out / "config.json", conf)
    dump_json(out / "generation_config.json", {
        "bos_token_id": BOS_ID,
        "do_sample": False,
        "eos_token_id": STOP_IDS,
        "pad_token_id": PAD_ID,
        "transformers_version": conf["transformers_version"],
    })
    for f in out.iterdir():
        f.chmod(0o644)  # safetensors writes 0600
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.symlink(f"../../../assets/qwen3-tokenizer/{f}", out / f)
    return sd


def load_back(out, spec, written):
    model, info = AutoModelForCausalLM.from_pretrained(
        str(out), dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    model.eval()
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(k), (k, info[k])
    c = model.config
    assert c.rope_parameters["rope_theta"] == spec["rope_theta"], c.rope_parameters
    assert c.head_dim == spec["head_dim"] and c.tie_word_embeddings == spec["tie_word_embeddings"]
    sd = model.state_dict()
    for k, v in written.items():
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], v.float()), k
    if spec["tie_word_embeddings"]:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    return model


# ----------------------------------------------------------------------------------------------
# reference numbers


def pick_vocab_subset(prompt0_ids):
    fixed = list(range(16)) + list(range(151643, 151649))
    subset = list(fixed)
    for t in prompt0_ids:
        if t not in subset and len(subset) < 16 + 6 + 26:
            subset.append(t)
    # fill the rest with an even spread across the vocabulary
    n_spread = 64 - len(subset)
    step = VOCAB // (n_spread + 1)
    cand = [step * (i + 1) + 7 for i in range(n_spread + 8)]
    for t in cand:
        if len(subset) == 64:
            break
        if t not in subset and t < VOCAB:
            subset.append(t)
    assert len(subset) == 64 and len(set(subset)) == 64
    return sorted(subset)


@torch.no_grad()
def manual_greedy(model, ids):
    """Cache-free greedy loop (full forward each step) to cross-check model.generate."""
    seq = list(ids)
    out = []
    for _ in range(MAX_NEW_TOKENS):
        logits = model(torch.tensor([seq])).logits[0, -1]
        t = int(logits.argmax())
        if t in STOP_IDS:
            return out, True
        out.append(t)
        seq.append(t)
    return out, False


@torch.no_grad()
def make_reference(name, spec, model, tok, out):
    prompts = []
    for p in PROMPTS:
        msgs = messages_for(p["system"], p["user"])
        text = chat_text(tok, msgs)
        prompts.append({"system": p["system"], "user": p["user"], "text": text, "ids": encode(tok, text)})

    subset = pick_vocab_subset(prompts[0]["ids"])
    sub_t = torch.tensor(subset)

    logits_ref = []
    prompt_margins = []
    rel_margins = []
    for i, p in enumerate(prompts):
        lg = model(torch.tensor([p["ids"]])).logits[0].float()  # [T, V]
        m = top2_margin(lg)
        prompt_margins.append(float(m.min()))
        rel_margins.append(float(rel_margin(lg).min()))
        logits_ref.append({
            "prompt": i,
            "argmax": [int(x) for x in lg.argmax(-1)],
            "logsumexp": [float(x) for x in lg.double().logsumexp(-1)],
            "values": [[float(x) for x in row] for row in lg[:, sub_t]],
            "min_top2_margin": float(m.min()),
        })

    # unbatched greedy
    greedy = []
    gen_margins = []
    for i, p in enumerate(prompts):
        ids = torch.tensor([p["ids"]])
        res = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=STOP_IDS, pad_token_id=PAD_ID, output_logits=True, return_dict_in_generate=True)
        gen = [int(x) for x in res.sequences[0, ids.shape[1]:]]
        toks, stopped = cut_at_stop(gen)
        n_steps = len(toks) + (1 if stopped else 0)
        step_m = [float(top2_margin(res.logits[s][0])) for s in range(n_steps)]
        gen_margins += step_m
        rel_margins += [float(rel_margin(res.logits[s][0])) for s in range(n_steps)]
        man = manual_greedy(model, p["ids"])
        assert man == (toks, stopped), (name, i, man, toks, stopped)
        greedy.append({"prompt": i, "ids": toks, "stopped_on_eos": stopped,
                       "text": tok.decode(toks), "min_top2_margin": min(step_m)})

    # batched greedy, left padding
    tok.padding_side = "left"
    tok.pad_token = "<|endoftext|>"
    assert tok.pad_token_id == PAD_ID
    enc = tok([p["text"] for p in prompts], padding=True, return_tensors="pt")
    for i, p in enumerate(prompts):  # padded rows == unpadded ids
        row = enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
        assert row == p["ids"]
    res = model.generate(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS, eos_token_id=STOP_IDS, pad_token_id=PAD_ID, return_dict_in_generate=True)
    plen = enc["input_ids"].shape[1]
    batched = []
    for i in range(len(prompts)):
        toks, stopped = cut_at_stop([int(x) for x in res.sequences[i, plen:]])
        batched.append({"prompt": i, "ids": toks, "stopped_on_eos": stopped})
    agree = all(b["ids"] == g["ids"] and b["stopped_on_eos"] == g["stopped_on_eos"] for b, g in zip(batched, greedy))

    # SFT losses
    losses = []
    tot_nll, tot_tok = 0.0, 0
    checked = False
    for r in sft_records_json():
        msgs = messages_for(r.get("system"), r["instruction"] + r.get("input", ""))
        prompt_ids = encode(tok, chat_text(tok, msgs))
        resp_ids = encode(tok, r["output"] + "<|im_end|>")
        assert resp_ids[-1] == EOS_ID
        inp = prompt_ids + resp_ids
        labels = [-100] * len(prompt_ids) + resp_ids
        lg = model(torch.tensor([inp])).logits[0]
        lp = lg.double().log_softmax(-1)
        nll = 0.0
        for t in range(len(inp) - 1):
            if labels[t + 1] != -100:
                nll -= float(lp[t, labels[t + 1]])
        n = len(resp_ids)
        if not checked:
            hf = float(model(torch.tensor([inp]), labels=torch.tensor([labels])).loss)
            assert abs(hf - nll / n) <= 1e-5 * max(1.0, abs(hf)), (hf, nll / n)
            checked = True
        losses.append({"nll_sum": nll, "tokens": n, "mean": nll / n,
                       "prompt_len": len(prompt_ids), "input_ids": inp})
        tot_nll += nll
        tot_tok += n

    ref = {
        "generator": "tests/reference/make_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "config_summary": {
            "hidden": spec["hidden_size"], "heads": spec["num_attention_heads"],
            "kv_heads": spec["num_key_value_heads"], "head_dim": spec["head_dim"],
            "tied": spec["tie_word_embeddings"], "dtype": "bfloat16" if spec["storage"] == "bf16" else "float32",
            "intermediate": spec["intermediate_size"], "layers": 2, "vocab": VOCAB, "rope_theta": spec["rope_theta"],
        },
        "stop_ids": STOP_IDS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "vocab_subset": subset,
        "prompts": prompts,
        "logits": logits_ref,
        "greedy": greedy,
        "greedy_batched_left_padded": {"pad_id": PAD_ID, "agrees_with_unbatched": agree, "rows": batched},
        "losses": {
            "file": "tests/fixtures/sft_small.jsonl",
            "loss": tot_nll / tot_tok,
            "tokens": tot_tok,
            "records": len(losses),
            "per_record": losses,
        },
    }
    dump_json(out / "reference.json", ref)
    return min(prompt_margins), min(gen_margins), min(rel_margins), agree, ref


# ----------------------------------------------------------------------------------------------
# data files


def sft_records_json():
    recs = []
    for r in SFT_RECORDS:
        d = {}
        if "system" in r:
            d["system"] = r["system"]
        d["instruction"] = r["instruction"]
        if "input" in r:
            d["input"] = r["input"]
        d["output"] = json.dumps(r["output"], ensure_ascii=False)
        recs.append(d)
    return recs


def write_sft_file():
    with open(FIX / "sft_small.jsonl", "w", encoding="utf-8") as f:
        for d in sft_records_json():
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def encode_literal(tok, text):
    return list(tok(text, split_special_tokens=True)["input_ids"])


def chat_ids_text_literal(tok, msgs, text):
    """The template's markers as special tokens and every text between them tokenized with
    split_special_tokens=True: what a prompt must be when its contents are documents, which may
    hold `<|im_end|>` without ending their turn. The pieces must spell the rendered template."""
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    pieces = []
    for m in msgs:
        pieces += [("<|im_start|>", [start]), (f"{m['role']}\n{m['content']}", None), ("<|im_end|>", [end]), ("\n", None)]
    pieces += [("<|im_start|>", [start]), ("assistant\n<think>\n\n</think>\n\n", None)]
    assert "".join(p for p, _ in pieces) == text, "the template changed: update the pieces"
    return [i for p, ids in pieces for i in (ids if ids is not None else encode_literal(tok, p))]


def write_chat_template_cases(tok):
    cases = []
    for name, msgs in CHAT_CASES:
        text = chat_text(tok, msgs)
        ids = encode(tok, text)
        literal = chat_ids_text_literal(tok, msgs, text)
        if not any(s in m["content"] for m in msgs for s in tok.all_special_tokens):
            assert literal == ids, name
        cases.append({"kind": "chat", "name": name, "messages": msgs, "text": text, "ids": ids, "ids_text_literal": literal})
    out = json.dumps(SFT_RECORDS[0]["output"], ensure_ascii=False) + "<|im_end|>"
    cases.append({"kind": "response", "name": "json_output_plus_im_end", "text": out, "ids": encode(tok, out)})
    # A response that quotes a turn marker: the text stays text, only the appended marker ends it.
    quoted = '{"question": "页面显示 <|im_end|> 是什么"}'
    cases.append({"kind": "response", "name": "output_quoting_im_end", "text": quoted + "<|im_end|>",
                  "ids": encode_literal(tok, quoted) + tok.convert_tokens_to_ids(["<|im_end|>"])})
    dump_json(FIX / "chat_template.json", cases)
    return cases


def dir_size(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file() and not f.is_symlink())


def main():
    FIX.mkdir(parents=True, exist_ok=True)
    write_sft_file()
    tok0 = AutoTokenizer.from_pretrained(str(TOK_DIR))
    write_chat_template_cases(tok0)

    summary = []
    for name, spec in FIXTURES.items():
        out = FIX / name
        if out.exists() or out.is_symlink():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        torch.manual_seed(spec["seed"])
        cfg = build_config(spec)
        model = Qwen3ForCausalLM(cfg)
        init_weights(model, spec)
        written = write_checkpoint(model, spec, out)
        del model
        m = load_back(out, spec, written)
        tok = AutoTokenizer.from_pretrained(str(out))  # through the symlinks, like a Hub folder
        pm, gm, rm, agree, ref = make_reference(name, spec, m, tok, out)
        summary.append((name, pm, gm, rm, agree, ref["losses"]["loss"], dir_size(out)))
        if min(pm, gm) < MIN_MARGIN:
            raise SystemExit(f"{name}: min top1-top2 margin {min(pm, gm):.4f} < {MIN_MARGIN}: raise final_norm_scale")

    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for name, pm, gm, rm, agree, loss, size in summary:
        print(f"{name:12s} size {size/1e6:6.2f} MB | min top1-top2 margin: prompts {pm:.4f}, greedy steps {gm:.4f} "
              f"(min relative to logit std {rm:.4f}) | batched left-padded greedy agrees: {agree} "
              f"| sft loss {loss:.4f}")
    total = sum(s[-1] for s in summary) + sum(
        (FIX / f).stat().st_size for f in ("sft_small.jsonl", "chat_template.json"))
    print(f"tests/fixtures total {total/1e6:.2f} MB")


if __name__ == "__main__":
    main()
