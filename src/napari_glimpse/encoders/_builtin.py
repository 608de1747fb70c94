"""The built-in encoders (registered on import of :mod:`napari_glimpse.encoders`)."""

from . import EncoderSpec, register_encoder

register_encoder(EncoderSpec("pcam", "small CNN trained on PCam train (shipped)", "napari_glimpse.encoders._build:small",
                             weights="encoder_pcam.safetensors"))
register_encoder(EncoderSpec("small", "small CPU CNN (untrained)", "napari_glimpse.encoders._build:small"))
register_encoder(EncoderSpec("resnet18", "ResNet-18, torchvision layout", "napari_glimpse.encoders._build:resnet18"))
register_encoder(EncoderSpec("resnet34", "ResNet-34, torchvision layout", "napari_glimpse.encoders._build:resnet34"))
