"""Pipeline texts that more than one test module reads."""

# A cycle (a → b → c → a), a dependency on a missing stage, and a bad duration.
THREE_MISTAKES = """\
name: broken
stages:
  - id: a
    uses: noop
    needs: [c]
  - id: b
    uses: noop
    needs: [a, ghost]
  - id: c
    uses: noop
    needs: [b]
    timeout: 5 parsecs
"""
