#!/usr/bin/env python3
"""Writes tests/data/llama2_tokenizer_golden.json: the LLaMA-2 token ids of every string in
llama2_tokenizer_strings.json, as Hugging Face transformers' slow LlamaTokenizer
(SentencePiece-based, legacy=True, the default for this tokenizer_config.json) produces
them with add_special_tokens=True, i.e. with BOS first.

    python3 tests/data/make_llama2_golden.py ../shared/tokenizers/llama2 \
        tests/data/llama2_tokenizer_strings.json

Output: a JSON list of {"text": ..., "ids": [...]}. test_tokenizer compares sqz's
encode(text, add_bos=true) with it.

Special-token text such as a literal "<s>" is tokenized as text (split_special_tokens=True):
sqz never turns text into control ids, so a prompt cannot inject BOS/EOS. HF's default
would map "<s>" to id 1 instead.

Without transformers, --sentencepiece writes a provisional file from the sentencepiece
module (same ids for these strings, since legacy LlamaTokenizer is sp.encode plus BOS),
marked "source": "provisional" so that it is replaced by a transformers run.
"""
import argparse
import json
import os
import sys


def load_strings(path):
    with open(path, encoding="utf-8") as f:
        strings = json.load(f)
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        sys.exit(f"{path}: expected a JSON array of strings")
    return strings


def golden_transformers(tokenizer_dir, strings):
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        tokenizer_dir, use_fast=False, legacy=True, split_special_tokens=True
    )
    cls = type(tok).__name__
    print(f"transformers {transformers.__version__}: {cls} (is_fast={tok.is_fast}, "
          f"legacy={getattr(tok, 'legacy', 'n/a')})")
    if tok.is_fast:
        print("warning: got a fast tokenizer; the golden ids should come from the slow, "
              "SentencePiece-based LlamaTokenizer (pip install sentencepiece)")
    # Older transformers ignore split_special_tokens and would map "<s>" to BOS.
    if tok.tokenize("<s>") == ["<s>"]:
        sys.exit("this transformers version does not honour split_special_tokens=True; "
                 "use transformers >= 4.34")
    out = []
    for s in strings:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        out.append({"text": s, "ids": list(ids)})
    return out, f"transformers {transformers.__version__} {cls}"


def golden_sentencepiece(tokenizer_dir, strings):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    print(f"sentencepiece {spm.__version__}: SentencePieceProcessor (provisional)")
    return [{"text": s, "ids": [sp.bos_id()] + sp.encode(s)} for s in strings]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer_dir", help="folder with tokenizer.model and tokenizer_config.json")
    ap.add_argument("strings", help="llama2_tokenizer_strings.json")
    ap.add_argument("-o", "--output", default=os.path.join(here, "llama2_tokenizer_golden.json"))
    ap.add_argument("--sentencepiece", action="store_true",
                    help="no transformers: write a provisional file from the sentencepiece module")
    args = ap.parse_args()

    strings = load_strings(args.strings)
    if args.sentencepiece:
        entries = golden_sentencepiece(args.tokenizer_dir, strings)
        doc = {"source": "provisional",
               "note": "made by make_llama2_golden.py --sentencepiece; replace with a "
                       "transformers run",
               "entries": entries}
    else:
        entries, source = golden_transformers(args.tokenizer_dir, strings)
        print(f"source: {source}")
        doc = entries
    # One entry per line, so that a diff shows which string changed.
    lines = ",\n".join("  " + json.dumps(e, ensure_ascii=False) for e in entries)
    with open(args.output, "w", encoding="utf-8") as f:
        if isinstance(doc, list):
            f.write("[\n" + lines + "\n]\n")
        else:
            head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()
                             if k != "entries")
            f.write("{" + head + ",\n \"entries\": [\n" + lines + "\n]}\n")
    print(f"wrote {len(entries)} entries to {args.output}")


if __name__ == "__main__":
    main()
