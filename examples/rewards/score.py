"""The per-text form: ``score(text) -> float``. Rewards an answer that starts with a number and stops."""


def score(text):
    words = text.strip().split()
    return float(bool(words) and words[0].isdigit()) - 0.05 * max(len(words) - 1, 0)
