"""The functions that cost most in a py-spy recording (`--format raw`: collapsed stacks, one
`frame;frame;... count` a line): self time (the innermost frame) and total time (anywhere on
the stack), as shares of all samples. `python bench/profile_top.py DIR/longpoll-agent.txt`."""
import collections
import sys


def main(path: str, top: int = 25):
    own, anywhere, total = collections.Counter(), collections.Counter(), 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            samples = int(count)
            total += samples
            own[frames[-1]] += samples
            for frame in set(frames):
                anywhere[frame] += samples
    print(f"{total} samples")
    print("self time:")
    for frame, samples in own.most_common(top):
        print(f"  {samples / total:6.1%}  {frame}")
    print("total time:")
    for frame, samples in anywhere.most_common(top):
        print(f"  {samples / total:6.1%}  {frame}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
