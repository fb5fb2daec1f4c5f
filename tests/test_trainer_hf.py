"""transformers' Trainer conventions (grpo.callbacks): TrainerCallback events with state and
control, ``trainer.state.log_history``, ``train(resume_from_checkpoint=...)``, and a LoRA run's
final model saved as a peft adapter (merged on request). Real tiny model, real HF generation."""

import pytest
import torch
from transformers import TrainerCallback

from grpo import GRPOConfig, GRPOTrainer

from conftest import Checksum


def rows(n=8):
    return [{"prompt": f"Say sevens {i}"} for i in range(n)]


def cfg(tmp_path, name="run", **kw):
    sections = dict(rollout={"num_generations": 4, "prompts_per_step": 2}, sampling={"max_tokens": 8},
                    optim={"learning_rate": 1e-2}, loss={"beta": 0.0}, forward={"micro_batch_size": 8},
                    log={"progress_bar": False}, checkpoint={"final_model": False})
    for key, value in kw.pop("sections", {}).items():
        sections[key] = {**sections.get(key, {}), **value}
    return GRPOConfig(**{"output_dir": str(tmp_path / name), "max_steps": 3, "seed": 0, **sections, **kw})


class Recorder(TrainerCallback):
    """Every event with the state's step at the time, and what on_log / on_evaluate got."""

    def __init__(self, stop_at=None):
        self.events, self.logs, self.evals, self.stop_at = [], [], [], stop_at

    def _record(self, name, state):
        self.events.append((name, state.global_step))

    def on_train_begin(self, args, state, control, **kw):
        self._record("train_begin", state)
        assert kw["model"] is not None and kw["optimizer"] is not None

    def on_step_end(self, args, state, control, **kw):
        self._record("step_end", state)
        if state.global_step == self.stop_at:
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        self._record("log", state)
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self._record("evaluate", state)
        self.evals.append(dict(metrics))

    def on_save(self, args, state, control, **kw):
        self._record("save", state)

    def on_train_end(self, args, state, control, **kw):
        self._record("train_end", state)


def weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_callbacks_get_every_event_with_an_advancing_state(tiny_dir, tmp_path):
    rec = Recorder()
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), args=cfg(tmp_path, sections={"checkpoint": {"steps": 2}, "eval": {"steps": 2}}),
                          eval_dataset=rows(2), callbacks=[rec])
    trainer.train()
    trainer.close()
    assert rec.events == [
        ("train_begin", 0), ("evaluate", 0),
        ("step_end", 1), ("log", 1),
        ("step_end", 2), ("log", 2), ("evaluate", 2), ("save", 2),
        ("step_end", 3), ("log", 3),
        ("evaluate", 3), ("train_end", 3),
    ]
    assert all("loss/loss" in logs and "reward/total/mean" in logs for logs in rec.logs)
    assert rec.evals[-1] and all(k.startswith("eval/") for k in rec.evals[-1])
    assert trainer.state.global_step == 3 and trainer.state.max_steps == 3
    assert trainer.state.epoch == pytest.approx(3 * 2 / 8) and trainer.state.best_metric is None


def test_log_history_has_one_entry_per_logged_step_with_the_loss(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, max_steps=4, sections={"log": {"steps": 2}}))
    last = trainer.train()
    trainer.close()
    history = trainer.state.log_history
    assert [e["step"] for e in history] == [2, 4]
    assert all("loss/loss" in e for e in history)
    assert history[-1]["loss/loss"] == last["loss/loss"] and history[-1]["epoch"] == pytest.approx(1.0)


def test_reward_functions_see_the_trainers_state(tiny_dir, tmp_path):
    seen = []

    def spy(completions, trainer_state, **kw):
        seen.append((trainer_state.global_step, trainer_state.max_steps, len(trainer_state.log_history)))
        return [0.0] * len(completions)

    trainer = GRPOTrainer(str(tiny_dir), [Checksum(), spy], rows(), cfg(tmp_path))
    trainer.train()
    trainer.close()
    assert seen == [(0, 3, 0), (1, 3, 1), (2, 3, 2)]  # the step scored, the log of the steps before


def test_should_training_stop_ends_the_run_after_that_step(tiny_dir, tmp_path):
    rec = Recorder(stop_at=2)
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(),
                          cfg(tmp_path, max_steps=5, sections={"checkpoint": {"final_model": True}}), callbacks=[rec])
    trainer.train()
    trainer.close()
    assert trainer.state.global_step == 2
    assert [e for e in rec.events if e[0] == "step_end"] == [("step_end", 1), ("step_end", 2)]
    assert rec.events[-1] == ("train_end", 2)
    assert (tmp_path / "run" / "final" / "config.json").exists()  # the final model as at max_steps


def test_add_and_remove_callback(tiny_dir, tmp_path):
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, max_steps=1))
    kept, dropped = Recorder(), Recorder()
    trainer.add_callback(kept)
    trainer.add_callback(dropped)
    trainer.remove_callback(dropped)
    trainer.train()
    trainer.close()
    assert ("step_end", 1) in kept.events and dropped.events == []


def test_resume_from_checkpoint_true_continues_a_stopped_run_to_the_same_weights(tiny_dir, tmp_path):
    full = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, "full"))
    full.train()
    full.close()
    part = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, "part", sections={"checkpoint": {"steps": 1}}),
                       callbacks=[Recorder(stop_at=1)])
    part.train()
    part.close()
    with pytest.raises(FileExistsError, match=r"resume_from_checkpoint=True"):  # a fresh run is refused
        GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, "part", sections={"checkpoint": {"steps": 1}})).train()
    rec = Recorder()
    again = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, "part", sections={"checkpoint": {"steps": 1}}),
                        callbacks=[rec])
    again.train(resume_from_checkpoint=True)
    again.close()
    assert again.state.global_step == 3
    assert rec.events[0] == ("train_begin", 1) and [e for e in rec.events if e[0] == "step_end"] == [
        ("step_end", 2), ("step_end", 3)]  # only the steps left
    assert [e["step"] for e in again.state.log_history] == [1, 2, 3]  # step 1's log came from the checkpoint
    want, got = weights(full), weights(again)
    assert all(torch.equal(want[n], got[n]) for n in want)


def test_resume_from_checkpoint_path_and_a_different_resume_from_are_refused(tiny_dir, tmp_path):
    run = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, max_steps=2, sections={"checkpoint": {"steps": 1}}))
    run.train()
    run.close()
    ckpts = tmp_path / "run" / "checkpoints"
    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(),
                          cfg(tmp_path, sections={"checkpoint": {"steps": 1}}, resume_from=str(ckpts / "step_1")))
    with pytest.raises(ValueError, match=r"resume_from_checkpoint=True.*step_2.*resume_from=.*step_1"):
        trainer.train(resume_from_checkpoint=True)
    trainer.close()
    fresh = GRPOTrainer(str(tiny_dir), [Checksum()], rows(), cfg(tmp_path, max_steps=2), callbacks=[Recorder()])
    fresh.train(resume_from_checkpoint=str(ckpts / "step_2"))  # a path: that checkpoint (here the last step)
    fresh.close()
    assert fresh.state.global_step == 2 and fresh.callback_handler.callbacks[0].events[0] == ("train_begin", 2)


def _lora_run(tiny_dir, tmp_path, name, **merge):
    from peft import LoraConfig

    trainer = GRPOTrainer(str(tiny_dir), [Checksum()], rows(),
                          cfg(tmp_path, name, max_steps=2, sections={"checkpoint": {"final_model": True, **merge}}),
                          peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    trainer.train()
    trainer.close()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        logits = trainer.model(input_ids=ids).logits
    return tmp_path / name / "final", ids, logits, trainer


def test_lora_final_model_is_a_peft_adapter_with_the_trained_logits(tiny_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final, ids, trained, _ = _lora_run(tiny_dir, tmp_path, "lora")
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert not (final / "config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    with torch.no_grad():
        before = base(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(base, str(final))(input_ids=ids).logits
    assert not torch.allclose(before, trained)  # the adapters moved
    torch.testing.assert_close(loaded, trained)


def test_lora_merge_option_writes_a_plain_model(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    final, ids, trained, _ = _lora_run(tiny_dir, tmp_path, "merged", merge_lora=True)
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    with torch.no_grad():
        loaded = AutoModelForCausalLM.from_pretrained(str(final))(input_ids=ids).logits
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-4)


def test_save_model_merges_on_request_whatever_the_config(tiny_dir, tmp_path):
    """What a pipeline grpo stage writes as its model output: plain weights for the next stage."""
    final, _, _, trainer = _lora_run(tiny_dir, tmp_path, "lora")
    trainer.save_model(tmp_path / "stage_model", merge_lora=True)
    assert (tmp_path / "stage_model" / "config.json").exists() and (final / "adapter_config.json").exists()


def test_an_adapter_folder_loads_as_a_merged_policy(tiny_dir, tmp_path):
    """What grpo eval and the pipeline stages load (grpo.models.load_policy): a plain model;
    ``grpo eval --model RUN`` finds the adapter in RUN/final."""
    from grpo.config import ForwardConfig
    from grpo.config import VLLMConfig
    from grpo.models import build_generator, load_policy
    from grpo.recipes.assemble import resolve_eval_model

    final, ids, trained, _ = _lora_run(tiny_dir, tmp_path, "lora")
    assert resolve_eval_model(None, str(final.parent)) == (str(final), None)
    model, tokenizer, path = load_policy(str(final), None, None, ForwardConfig(), torch.device("cpu"))
    assert path is None and not hasattr(model, "peft_config") and tokenizer is not None  # vLLM: a saved copy
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
    generator = build_generator("hf", VLLMConfig(), str(final))  # grpo sample --model RUN/final
    assert not hasattr(generator.model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(generator.model(input_ids=ids).logits, trained, rtol=1e-4, atol=1e-4)
