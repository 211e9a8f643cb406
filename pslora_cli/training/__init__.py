"""Training: the recipe for one task (recipe.py), its regularisers, checkpoints, and a task trained into a store
(task.py)."""
