"""The HTML tree viewer and its routes, for judging branch quality before training. Built
in a later issue on top of the store's reads."""
