"""SFT warm start on the built-in arithmetic task: the recipe of the demo's teacher (or student), run alone.

Commands (CPU):
  python -m tipjax.sft --config=configs/sft_arithmetic.py --workdir=/tmp/sft_teacher            # the teacher
  python -m tipjax.sft --config=configs/sft_arithmetic.py:student --workdir=/tmp/sft_student    # the student
  python -m tipjax.export --workdir /tmp/sft_teacher --out /tmp/sft_teacher_hf     # a Hugging Face folder
Variants: teacher (default), student, tiny (a 1-layer model, a few steps: tests).
Expected result: see configs/demo.py, which builds both models with exactly these settings and evaluates them
on held-out problems (teacher about 2-4 minutes on 2 busy CPU cores).
"""

from tipjax import demo


def get_config(arg=None):
    if arg not in (None, "teacher", "student", "tiny"):
        raise ValueError(f"unknown variant {arg!r}; known: teacher, student, tiny")
    return demo.sft_config("student" if arg == "student" else "teacher", "tiny" if arg == "tiny" else "full")
