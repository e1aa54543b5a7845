"""ck_dagster's full fine-tune recipe: torchtune's single-device full fine-tune recipe with
validation loss and a choice of epochs to keep (see ``recipe_features``).

Run: ``tune run ck_dagster/training/full_recipe.py --config finetune.yaml``.
"""

from ck_dagster.training.recipe_features import RecipeFeatures, run_recipe, torchtune_recipe

_torchtune = torchtune_recipe("full_finetune_single_device")


class FullRecipe(RecipeFeatures, _torchtune.FullFinetuneRecipeSingleDevice):  # type: ignore[misc]
    """torchtune's ``FullFinetuneRecipeSingleDevice`` with ck_dagster's features."""


if __name__ == "__main__":
    run_recipe(FullRecipe)
