"""Built-in agent types: researcher, random, deployer, analyst."""
