"""The card stage: render the model, GGUF and dataset cards (sft_router.release.card_rendering) with the run's numbers
and save them.

Usage: python -m sft_router.card --config recipes/tiny/router.yaml
       (writes runs/<name>/card/README.md, runs/<name>/card/gguf/README.md and runs/<name>/card/dataset/README.md)
"""

from __future__ import annotations

import time

from sft_router.core.config import parse_recipe
from sft_router.core.errors import one_line_errors
from sft_router.core.run_folder import stage_output
from sft_router.release.card_rendering import (
    read_metrics,
    render_dataset_card,
    render_gguf_card,
    render_model_card,
    save_card,
)


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    started = time.time()
    (recipe,) = parse_recipe(argv)
    metrics = read_metrics(recipe)
    model_card, gguf_card = render_model_card(recipe, metrics), render_gguf_card(recipe, metrics)
    dataset_card = render_dataset_card(recipe)
    with stage_output(recipe, "card", started) as (out, _):
        save_card(recipe, model_card, out)
        save_card(recipe, gguf_card, out / "gguf")
        (out / "dataset").mkdir()
        dataset_card.save(out / "dataset" / "README.md")
    print(f"card: {recipe.stage_dir('card') / 'README.md'} and {recipe.stage_dir('card') / 'gguf' / 'README.md'}")


if __name__ == "__main__":
    main()
