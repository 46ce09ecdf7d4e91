-- When claims on the resource were last decided (the deciding transaction's
-- start). The oversold audit recounts only the resources decided since its
-- previous pass instead of every granted claim of every resource, which on a
-- large claims table was a full scan, seconds of CPU, every pass of every
-- worker. Not indexed, so setting it keeps the fence update HOT.
ALTER TABLE resources ADD COLUMN decided_at TIMESTAMPTZ;
