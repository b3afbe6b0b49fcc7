"""From camera videos to searchable tracklets.

`detections` reads the person boxes a detector or tracker produced (MOTChallenge text, CSV, JSON);
`frames` reads videos and folders of frames and cuts the boxes out of them (or finds people with
OpenCV's HOG detector); `tracklets` groups one camera's boxes of one person into a tracklet, embeds
them and turns each tracklet into one gallery item. `python -m mgn_tf.search index --videos ...` is
the command-line tool over this package (docs/search.md, "Videos").
"""
