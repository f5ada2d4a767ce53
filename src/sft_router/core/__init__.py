"""What every stage reads: errors, the recipe, the run folder, the stage registry and the router's format."""
