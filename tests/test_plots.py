"""The run's pictures as a person reads them: every value inside its axis, the threshold in the legend,
sample grids with a title and the prompt / seed of each row / column; the kernels built before the clock."""

import torch

from elbo_kernels.train import TrainConfig
from elbo_kernels.train import trainer as trainer_module
from elbo_kernels.train.plots import LABEL_CHARS, curve_figure, grid_figure


def _history():
    return [
        {"seconds": 1.0, "reward_mean": 0.5},
        {"seconds": 2.0, "reward_mean": 0.6, "digiteval": 0.5, "diversity": 1.18},
        {"seconds": 3.0, "reward_mean": 0.7, "digiteval": 0.93, "diversity": 0.8},
    ]


def test_curve_keeps_a_diversity_above_one_inside_the_axis():
    fig = curve_figure(_history(), before=0.3, diversity_before=1.25)
    right = fig.axes[1]
    low, high = right.get_ylim()
    values = [y for line in right.get_lines() for y in line.get_ydata()]
    assert max(values) == 1.25 and low <= min(values) and max(values) < high


def test_curve_draws_before_values_at_zero_seconds():
    fig = curve_figure(_history(), before=0.3, diversity_before=1.25)
    by_label = {line.get_label(): line for line in fig.axes[1].get_lines()}
    assert list(by_label["digiteval"].get_xdata())[0] == 0.0 and list(by_label["digiteval"].get_ydata())[0] == 0.3
    assert list(by_label["diversity ratio"].get_ydata())[0] == 1.25


def test_curve_legend_names_the_threshold():
    fig = curve_figure(_history())
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "digiteval 0.9" in labels and "diversity ratio" in labels and "reward (mean)" in labels


def test_grid_has_a_title_and_labels_rows_by_prompt_and_columns_by_seed():
    prompts = ["a handwritten 3", "a very long prompt about a cat sitting on a mat in the sun"]
    fig = grid_figure(torch.rand(2 * 3, 1, 8, 8), prompts, [0, 1, 2], title="before training")
    axes = [fig.axes[i * 3:(i + 1) * 3] for i in range(2)]
    assert fig._suptitle.get_text() == "before training"
    assert [ax.get_title() for ax in axes[0]] == ["seed 0", "seed 1", "seed 2"]
    assert axes[0][0].get_ylabel() == "a handwritten 3"
    long_label = axes[1][0].get_ylabel()
    assert long_label.endswith("...") and len(long_label) == LABEL_CHARS and prompts[1].startswith(long_label[:-3])


def test_grid_puts_each_image_in_its_prompt_row_and_seed_column():
    images = torch.zeros(2 * 3, 1, 4, 4)
    images[1 * 3 + 2] = 1.0  # prompt 1, seed 2
    fig = grid_figure(images, ["a", "b"], [0, 1, 2])
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert float(shown[5].mean()) == 1.0 and all(float(a.mean()) == 0.0 for i, a in enumerate(shown) if i != 5)


def test_curve_of_a_run_without_the_metric_draws_no_metric_axis_or_threshold():
    history = [{"seconds": 1.0, "reward_mean": 0.5}, {"seconds": 2.0, "reward_mean": 0.7}]
    fig = curve_figure(history, metric="digiteval")
    assert len(fig.axes) == 1  # the reward only
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["reward (mean)"]


def test_grid_draws_pixel_value_one_white_and_zero_black():
    images = torch.zeros(2, 1, 4, 4)
    images[1] = 1.0
    fig = grid_figure(images, ["a"], [0, 1])
    fig.canvas.draw()
    rgba = [ax.get_images()[0].make_image(fig.canvas.get_renderer())[0] for ax in fig.axes]
    dark, bright = (float(torch.as_tensor(a[..., :3].astype("float32")).mean()) for a in rgba)
    assert dark < 10 and bright > 245  # 0 -> black, 1 -> white (0-255 RGB), so darker images look darker


def test_trainer_builds_the_kernels_before_the_timed_loop(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "resolve_backend", lambda backend, device: calls.append(backend))
    config = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, prompts_per_epoch=2, group_size=2,
                         draws_per_sample=2, eval_seeds=1, plots=False, tensorboard=False, progress=False)
    trainer_module.Trainer(config)
    assert calls == ["auto"]
