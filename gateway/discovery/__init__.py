"""Finding boards on USB: udev, sysfs polling, and classifying devices into sightings."""
