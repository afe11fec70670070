"""The shipped rule packs (``*.rules``) and the generator of the ANSM interaction pack.

``default.rules`` is the rule catalogue; ``ansm-interactions.rules`` and its report are generated
by ``vigie rules import-ansm`` (``vigie.rules.packs.ansm``) from the ANSM thesaurus and the
reviewed class and substance tables beside it (``ansm_classes.csv``, ``ansm_substances.csv``).
"""

__all__: list[str] = []
