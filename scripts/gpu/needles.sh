# Needles unlike any the SFT data teaches (`longreach eval niah` flags), sourced by smollm2_pipeline.sh and
# milestone_b.sh: RING, a "where" fact (the SFT's templates are "X's favourite way ... is to ..." statements and
# key-value pairs; docs/RESULTS.md session 3), and PASSKEY, a random 5-digit key per cell.
RING=(--needle "Anna's grandmother hid her wedding ring inside the blue teapot on the top kitchen shelf."
      --question "Where did Anna's grandmother hide her wedding ring?"
      --answer "inside the blue teapot on the top kitchen shelf" --subject "Anna's grandmother")
PASSKEY=(--needle "The pass key of the red door is {key}. Remember it. {key} is the pass key of the red door."
         --question "What is the pass key of the red door?" --answer "{key}" --subject "red door")
