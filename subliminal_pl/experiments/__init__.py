"""Experiments as declarative specs: the same stages for the embedded tiny world and for Hugging Face models.

    spec.py        the typed spec (`Experiment`) and its roles
    bases.py       ToyBases | PretrainedBases: the shared init and the controls
    teachers.py    FinetunedTeachers | SystemPromptTeachers, with the neutral (control) teacher
    carriers.py    how the students' data is made (NumbersCarrier), generation and data-step stages
    text_carriers.py  CodeCarrier | ReasoningCarrier: code completions and maths reasoning (docs/carriers.md)
    students.py    same-init and cross (init or model) students
    evaluation.py  probe, MLP and report stages
    recipes.py     fit recipes and the hardware profile every recipe takes its machine settings from
    validate.py    checks of a spec before any stage starts
    build.py       the stage graph and the report's manifest
    command.py     `subliminal-pl pipeline`

See docs/experiments.md.
"""
