"""What is read off the results: stages and spurts of a λ̂ curve, behavioural probes, the figure."""
