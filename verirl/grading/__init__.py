"""Checking answers: the engine behind the ``math_answer`` verifier (contract and the
written grading policy: ``README.md`` here).

- :mod:`verirl.grading.policy`: the grading policy's switches and presets;
- :mod:`verirl.grading.extract`: which text is the final answer (completion, gold field);
- :mod:`verirl.grading.numbers`: plain numbers compared without the parser;
- :mod:`verirl.grading.judge`: one pair's verdict (what the sandbox workers run);
- :mod:`verirl.grading.parse`: safe parser from LaTeX/plain math to sympy values;
- :mod:`verirl.grading.equiv`: equivalence of two parsed answers under a policy;
- :mod:`verirl.grading.steps`: splitting a solution into steps for process verifiers.

Importing this package imports none of them; only ``parse`` and ``equiv`` import sympy.
"""
