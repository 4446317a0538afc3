-- Argo CD health of a Weir DataStream (weir.dev/v1alpha1): its Ready condition, once the
-- operator has observed the current generation.
local hs = {}
local generation = obj.metadata.generation
local status = obj.status
if status == nil or (generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Weir operator to reconcile the current generation"
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
-- Ready=False: creating the topic, or waiting on readers before deleting it, is progress;
-- anything else needs someone to act (the message says what).
if ready.reason == "Creating" or ready.reason == "StillRead" then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
return hs
