"""One stop-token policy: training rollouts and `tipjax.eval` stop at the same token of a real model folder."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import transformers

from fixtures_tokenizer import build_tokenizer, save_tiny_qwen3
from tipjax import config_loader, config_schema, eval as tev, sampling, tokenization, train


def _greedy_tokens(folder, prompt_ids, n):
    """transformers' own greedy continuation (no stop token), the reference for which token comes when."""
    import torch

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor(prompt_ids), max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    return out[0, prompt_ids.shape[1]:].numpy()


def _untied_model(folder, tokenizer):
    """A tiny random Qwen3 with an untied head (a tied one just repeats the last prompt token greedily)."""
    import torch

    save_tiny_qwen3(folder, tokenizer, seed=3)
    config = transformers.AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings, config.initializer_range = False, 0.5
    torch.manual_seed(4)
    transformers.Qwen3ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_training_and_eval_stop_at_a_second_generation_config_stop_id(tmp_path):
    tokenizer = build_tokenizer(n_rows=50, vocab_size=300)
    folder = _untied_model(tmp_path / "model", tokenizer)
    prompt = np.asarray([[5, 17, 42, 9, 11, 3]], np.int32)
    greedy = _greedy_tokens(folder, prompt, 12)
    config_eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    # A stop id listed only by generation_config.json: the greedy token at step k, its first occurrence, as
    # late as this random model allows.
    firsts = [i for i in range(len(greedy)) if greedy[i] != config_eos and greedy[i] not in greedy[:i]]
    k = firsts[-1]
    assert k >= 3, greedy
    second = int(greedy[k])
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["eos_token_id"] = [config_eos, second]
    (folder / "generation_config.json").write_text(json.dumps(gen))

    loaded = tev.resolve_model(folder)
    assert second in loaded.eos_token_ids and config_eos in loaded.eos_token_ids

    cfg = config_loader.to_dataclass(config_loader.load_config("configs/tiny.py", [
        f"--config.student.path={folder}", f"--config.teacher.path={folder}", "--config.rollout.temperature=0.0",
        "--config.rollout.max_new_tokens=12", "--config.rollout.samples_per_prompt=1", "--config.prompts_per_step=1",
        f"--config.data.max_prompt_length={prompt.shape[1]}"]), config_schema.TrainConfig)
    cfg = dataclasses.replace(cfg, mesh=config_schema.MeshSpec(1, 1, 1),
                              student=dataclasses.replace(cfg.student, arch=None),
                              teacher=dataclasses.replace(cfg.teacher, arch=None))
    s = train.setup(cfg)
    assert s.eos_ids == loaded.eos_token_ids == tokenization.stop_ids(folder, loaded.tokenizer)
    state = s.init_fn(s.student, jax.random.PRNGKey(0))
    mask = np.ones_like(prompt)
    train_length = int(s.rollout_fn(state, prompt, mask)[0])

    out = sampling.generate(loaded.model, jnp.asarray(prompt), jnp.asarray(mask), max_new_tokens=12,
                            temperature=0.0, eos_token_id=loaded.eos_token_ids, rng=jax.random.key(0))
    assert train_length == int(out.lengths[0]) == k + 1  # both stop right after emitting `second`
    assert int(out.tokens[0, prompt.shape[1] + k]) == second
