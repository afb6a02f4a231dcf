"""Model access: ``reward_fn(model, inputs)``. The probability that the answer's first token is right, from
one forward of every member's rows (population mode: K members, K·b rows, member-major)."""

import torch

from eggroll_trainer.llm.fitness import members_now


def reward_fn(model, inputs):
    k = members_now()
    ids, mask = inputs["input_ids"].repeat(k, 1), inputs["attention_mask"].repeat(k, 1)  # (K·b, T)
    probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[:, -1].float(), dim=-1)  # (K·b, V)
    first = [
        inputs["tokenizer"](a, add_special_tokens=False)["input_ids"][0] for a in inputs["answer"]
    ]  # (b,)
    right = torch.tensor(first, device=probs.device).repeat(k)  # (K·b,)
    return probs.gather(1, right[:, None]).view(k, -1)  # (K, b)
