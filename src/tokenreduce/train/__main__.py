"""``python -m tokenreduce.train finetune --model fmnist-vit --method "tome:r=16" ...``"""

from .cli import main

if __name__ == "__main__":
    main()
