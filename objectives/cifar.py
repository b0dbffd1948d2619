"""Recipes for the CIFAR-10 ResNets (``cifar10-resnet20`` ... ``-56``), used in the README.

    nnfeat render cifar10-resnet20 --objective-file objectives/cifar.py:cat_vs_dog --batch 2
"""

from nnfeat.objectives import channel, diversity, logit

CAT, DOG = 3, 5

#: a cat that is not a dog: maximize the cat logit, minimize the dog logit
cat_vs_dog = logit(CAT) - 0.5 * logit(DOG)

#: four different renders of layer3 channel 7 (render with --batch 4)
layer3_7_diverse = channel("layer3", 7) + 100 * diversity("layer3")

#: the interplay of two layer3 channels (neuron addition, Feature Visualization fig. 5)
layer3_7_plus_12 = channel("layer3", 7) + channel("layer3", 12)
