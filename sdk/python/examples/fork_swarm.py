import mitos
sb = mitos.create("python")
swarm = sb.fork(8)
for i, agent in enumerate(swarm):
    print(agent.exec(f"python3 -c 'print({i} ** 2)'").stdout)
keeper = swarm[3].fork(1)[0]
