"""The batch form: ``reward(prompts, completions, **fields)``; ``answer`` is a column of arithmetic.jsonl."""


def reward(prompts, completions, answer):
    out = []
    for text, want in zip(completions, answer):
        digits = "".join(c for c in text.strip().split(" ")[0] if c.isdigit())
        if digits == want:
            out.append(1.0)
        else:  # partial credit: how many leading digits are right
            same = next(
                (i for i, (x, y) in enumerate(zip(digits, want)) if x != y), min(len(digits), len(want))
            )
            out.append(0.5 * same / len(want))
    return out
