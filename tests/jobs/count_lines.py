"""Test job: prints ``line 1`` .. ``line 5``, then waits (up to ten minutes) to be stopped."""

import time

for number in range(1, 6):
    print("line", number, flush=True)
time.sleep(600)
