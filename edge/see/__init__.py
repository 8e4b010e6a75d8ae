"""see: frames in (camera, files, clips) and privacy (face blurring) before anything else looks at them."""
