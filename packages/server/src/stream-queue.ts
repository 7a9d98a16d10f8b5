// A bounded queue between a producer (guest output arriving from the agent)
// and an async-iterator consumer (the HTTP response). `push` resolves only
// when there is room, so a slow client slows the guest command down instead
// of growing mitosd's memory (the agent's credit window does the rest).

export class StreamQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private size = 0;
  private waitingConsumer: (() => void) | undefined;
  private readonly waitingProducers: Array<() => void> = [];
  private done = false;
  private error: Error | undefined;

  constructor(
    private readonly highWater: number,
    private readonly sizeOf: (t: T) => number = () => 1,
  ) {}

  async push(item: T): Promise<void> {
    if (this.done) return;
    this.items.push(item);
    this.size += this.sizeOf(item);
    this.wakeConsumer();
    while (this.size > this.highWater && !this.done) {
      await new Promise<void>((r) => this.waitingProducers.push(r));
    }
  }

  end(error?: Error): void {
    if (this.done) return;
    this.done = true;
    this.error = error;
    this.wakeConsumer();
    for (const p of this.waitingProducers.splice(0)) p();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        this.size -= this.sizeOf(item);
        if (this.size <= this.highWater) for (const p of this.waitingProducers.splice(0)) p();
        yield item;
        continue;
      }
      if (this.done) {
        if (this.error) throw this.error;
        return;
      }
      await new Promise<void>((r) => {
        this.waitingConsumer = r;
      });
    }
  }

  private wakeConsumer(): void {
    const c = this.waitingConsumer;
    this.waitingConsumer = undefined;
    c?.();
  }
}
