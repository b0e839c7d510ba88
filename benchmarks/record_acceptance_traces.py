"""Record a draft/target pair's lossless acceptance traces: for each prompt, the target's greedy answer
and, at each of its positions t, whether the draft's greedy token after the answer's first t tokens is
the target's token t.

    python benchmarks/record_acceptance_traces.py --out tests/data/acceptance_traces_embedded.json

Such a trace decides every lossless cycle whatever the window schedule: a cycle at position t with
window w accepts the run of matches from t on, up to w (accepted draft tokens are the target's, so
the draft's next proposal follows the same prefix). A schedule can therefore be replayed on real
acceptance, and the best fixed window computed exactly (``tests/test_adaptive.py``). The replay was
checked against the decoder: for each of the 24 recorded prompts a fixed window of 1 accepted the same
number of draft tokens replayed as decoded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "acceptance_traces_embedded.json"


def trace(decoder, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """(the target's greedy answer, match[t]: 1 where the draft's greedy token after answer[:t] is answer[t])."""
    import torch

    from autojudge.decoding import DecodeConfig

    answer = decoder.generate(prompt_ids, DecodeConfig(mode="target", max_new_tokens=max_tokens)).token_ids
    draft = decoder.backend.draft
    with torch.inference_mode():
        hidden = draft.hidden_states(torch.tensor([prompt_ids + answer]), draft.new_cache())  # [1, S, H]
        predicted = draft.greedy(hidden[:, len(prompt_ids) - 1:])[0]  # [A + 1]: predicted[t] follows answer[:t]
    return answer, [int(predicted[t] == token) for t, token in enumerate(answer)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=16, help="GSM8K test questions (the first ones).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    from prompts import CHAT, gsm8k

    from autojudge.decoding import SpeculativeDecoder
    from autojudge.models import encode_prompt, load_draft, load_target, quiet_transformers
    from autojudge.storage import atomic_write_bytes

    quiet_transformers()
    target = load_target("embedded", device="cpu")
    decoder = SpeculativeDecoder(target, load_draft("embedded", target))
    report = {"pair": "embedded", "max_tokens": args.max_tokens, "chat_template": True, "kinds": {}}
    for kind, prompts in (("gsm8k", gsm8k(args.questions)), ("chat", CHAT)):
        rows = []
        for prompt in prompts:
            ids = encode_prompt(target.tokenizer, prompt)
            answer, match = trace(decoder, ids, args.max_tokens)
            rows.append({"prompt": prompt, "prompt_tokens": len(ids),
                         "answer": answer, "match": "".join(map(str, match))})
            print(f"{kind}: {sum(match)}/{len(match)} matched: {prompt[:60]!r}", flush=True)
        report["kinds"][kind] = rows
    atomic_write_bytes(args.out, (json.dumps(report, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
