"""ck_dagster's LoRA recipe: torchtune's single-device LoRA recipe with validation loss
and a choice of epochs to keep (see ``recipe_features``).

Run: ``tune run ck_dagster/training/lora_recipe.py --config finetune.yaml``.
"""

from ck_dagster.training.recipe_features import RecipeFeatures, run_recipe, torchtune_recipe

_torchtune = torchtune_recipe("lora_finetune_single_device")


class LoRARecipe(RecipeFeatures, _torchtune.LoRAFinetuneRecipeSingleDevice):  # type: ignore[misc]
    """torchtune's ``LoRAFinetuneRecipeSingleDevice`` with ck_dagster's features."""


if __name__ == "__main__":
    run_recipe(LoRARecipe)
